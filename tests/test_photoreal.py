"""The path-traced reference in the frame loop: Cycles sees what the labels say, for primitives,
textured meshes and the robots' link meshes (the Franka, the UR5e of the training scenes); run folders get the new videos; the spec's material
and lighting fields validate; the evaluation's metrics behave on analytic cases."""

import json

import numpy as np
import pytest

pytest.importorskip("bpy")

from hybridsim.scenario.spec import SpecError  # noqa: E402


def _frames(scenario: str, n: int, extra=()):
    from render.pathtrace import preload

    preload()
    from hybridsim.config import compose
    from hybridsim.pipeline import Simulation

    cfg = compose([f"scenario={scenario}", "refine.enabled=false", "reference=pathtraced", "pathtrace.samples=4",
                   *extra])
    cfg.scenario.timing.duration = n / cfg.scenario.timing.fps + 1e-6
    sim = Simulation(cfg)
    try:
        frames = list(sim.frames())
    finally:
        sim.close()
    return sim, frames


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["default", "mesh_slope", "franka_push"])
def test_object_index_pass_matches_instance_labels(scenario):
    """Cycles' object-index pass against the splat G-buffer's instance labels, every camera, over
    frames where both show the entity on >= 20 pixels: mean IoU >= 0.9 for entities of >= 150
    pixels. Splat silhouettes reach ~0.5 px beyond the surface, which alone costs a 9x9-pixel box
    ~15 % IoU, so smaller entities must instead sit where Cycles draws them (centroids within
    0.75 px) with IoU >= 0.8."""
    _assert_labels_match_cycles(*_frames(scenario, 8))


@pytest.mark.slow
def test_object_index_pass_matches_instance_labels_for_a_training_robot(tmp_path):
    """The UR5e that random training scenes may hold (refine_data.ROBOTS; the Franka is covered by
    franka_push): its link meshes, posed and moving, are where the labels say."""
    import yaml

    from hybridsim.training.refine_data import random_scene

    scen = random_scene(9, frames=8, res=64, n_cameras=2, robot=1.0)  # seed 9: a UR5e in view of both cameras
    assert scen.entities[-1].file.endswith("ur5e.xml")
    path = tmp_path / "robot_scene.yaml"
    path.write_text(yaml.safe_dump(scen.to_dict()))
    sim, frames = _frames(str(path), 8)
    assert _assert_labels_match_cycles(sim, frames) >= {(c, "robot") for c in sim.cameras}


def _assert_labels_match_cycles(sim, frames) -> set:
    """The IoU check of test_object_index_pass_matches_instance_labels; -> the (camera, entity) pairs seen."""
    names = {i + 1: e.name for i, e in enumerate(sim.scenario.entities)}
    seen = {}
    for f in frames:
        for cam in sim.cameras:
            ours = f.gbuffer[cam].instance_id[0, 0].numpy()
            theirs = f.pathtraced[cam].instance[0]
            assert theirs.shape == ours.shape
            for i, name in names.items():
                a, b = ours == i, theirs == i
                if a.sum() >= 20 and b.sum() >= 20:
                    shift = np.hypot(*(np.mean(np.nonzero(a), 1) - np.mean(np.nonzero(b), 1)))
                    seen.setdefault((cam, name), []).append(((a & b).sum() / (a | b).sum(), b.sum(), shift))
    assert seen, "no entity visible"
    for key, rows in seen.items():
        iou, area, shift = (float(np.mean(c)) for c in zip(*rows))
        if area >= 150:
            assert iou >= 0.9, (key, iou, area)
        else:
            assert iou >= 0.8 and shift <= 0.75, (key, iou, area, shift)
    f = frames[-1]
    for cam in sim.cameras:  # the lit render rides along
        assert f.lit[cam].rgb.shape[-1] == 3 and f.pathtraced[cam].rgb.dtype == np.uint8
    return set(seen)


@pytest.mark.slow
def test_run_writes_pathtraced_and_lit_videos(tmp_path):
    import av

    import hybridsim

    res = hybridsim.run("default", ["reference=both", "pathtrace.samples=2", "scenario.timing.duration=0.2",
                                    "+scenario.lighting.environment.hdri=sunset"], out_dir=tmp_path / "run",
                        progress=False)
    assert res.status == "ok"
    for name in ("pathtraced_main.mp4", "lit_main.mp4", "reference_main.mp4", "compare_main.mp4"):
        with av.open(str(tmp_path / "run" / name)) as c:
            frames = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
        assert len(frames) == res.n_frames, name
    assert frames[0].shape[1] == 4 * 128  # compare: coarse | refined | path-traced | raster


def test_material_and_environment_fields_validate_and_sample():
    from hybridsim.config import compose
    from hybridsim.scenario.sampling import sample_scenario
    from hybridsim.scenario.spec import Scenario

    cfg = compose(["scenario=default", "+scenario.lighting.environment.hdri=forest",
                   "+scenario.lighting.environment.rotation=40", "+scenario.entities.ball.appearance.metallic=1.0"])
    env = cfg.scenario.lighting.environment
    assert (env.hdri, env.rotation, env.strength) == ("forest", 40.0, 1.0)
    assert next(e for e in cfg.scenario.entities if e.name == "ball").appearance.metallic == 1.0
    for bad, where in ((["+scenario.lighting.environment.hdri=mars"], "environment.hdri"),
                       (["+scenario.entities.ball.appearance.roughness=1.5"], "appearance.roughness"),
                       (["+scenario.entities.ball.appearance.ior=0.5"], "appearance.ior"),
                       (["+scenario.lighting.environment.strength=-1"], "environment.strength")):
        with pytest.raises(SpecError, match=where):
            compose(["scenario=default", *bad])
    data = {"name": "x", "cameras": {"main": {"pos": [2, 0, 1]}},
            "entities": {"ball": {"type": "sphere", "radius": 0.1, "pos": [0, 0, 1],
                                  "appearance": {"roughness": {"uniform": [0.1, 0.9]},
                                                 "transmission": {"choice": [0.0, 1.0]}}}},
            "lighting": {"environment": {"hdri": {"choice": ["forest", "city"]}, "rotation": {"uniform": [0, 360]}}}}
    s = Scenario.from_dict(data)
    a, b = sample_scenario(s, 3), sample_scenario(s, 4)
    assert a == sample_scenario(s, 3)  # per-episode sampling is deterministic
    assert 0.1 <= a.entities[0].appearance.roughness <= 0.9 and a.lighting.environment.hdri in ("forest", "city")
    assert (a.entities[0].appearance, a.lighting) != (b.entities[0].appearance, b.lighting)


def test_metrics_on_analytic_cases():
    from hybridsim.training.pathtrace_eval import fit_gain_offset, psnr, sequence_metrics

    rng = np.random.default_rng(0)
    ref = [(rng.random((32, 32, 3)) * 200 + 20).astype(np.uint8) for _ in range(3)]
    assert psnr(ref[0], ref[0]) > 100
    off = [np.clip(r.astype(np.int32) + 16, 0, 255).astype(np.uint8) for r in ref]
    assert abs(psnr(ref[0], off[0]) - 20 * np.log10(255 / 16)) < 0.01
    # a per-channel affine change is undone exactly by the gain + offset fit
    aff = [(r.astype(np.float64) * 0.5 + 30).astype(np.uint8) for r in ref]
    fitted = fit_gain_offset(aff, ref)
    assert psnr(ref[0], fitted[0]) > 45
    masks = [np.zeros((32, 32), bool) for _ in ref]
    for m in masks:
        m[8:16, 8:16] = True
    m = sequence_metrics({"pathtraced": ref, "coarse": off, "refined": ref}, masks)
    assert m["psnr_refined"] > 100 and m["flip_refined"] < 1e-6 and m["ssim_refined"] == pytest.approx(1.0)
    assert m["psnr_objects_coarse"] == pytest.approx(m["psnr_coarse"], abs=0.5)
    assert "psnr_lit" not in m  # kinds not given are not reported


def test_eval_refiner_on_validation_clips(tmp_path, capsys):
    """`eval-refiner clips=DIR` streams the shipped refiner over saved path-traced clips and scores
    it against their Cycles targets; a target equal to the lit render scores the lit render perfectly."""
    from hybridsim.cli import main

    rng = np.random.default_rng(0)
    cond = rng.random((2, 4, 21, 128, 128)).astype(np.float16)
    lit = (np.clip(cond[:, :, :3].astype(np.float32), 0, 1) * 255).round().astype(np.uint8).transpose(0, 1, 3, 4, 2)
    np.savez(tmp_path / "scene_0000.npz", cond=cond, target=lit, scenario=np.array("{}"))  # lit_version 1
    assert main(["eval-refiner", f"clips={tmp_path}", f"out={tmp_path / 'ev'}", "progress=false"]) == 2
    assert "recondition=true" in capsys.readouterr().err and not (tmp_path / "ev").exists()  # refused up front
    from hybridsim.training.pathtrace_data import LIT_VERSION

    np.savez(tmp_path / "scene_0000.npz", cond=cond, target=lit, scenario=np.array("{}"), lit_version=LIT_VERSION)
    assert main(["eval-refiner", f"clips={tmp_path}", f"out={tmp_path / 'ev'}", "threads=1", "progress=false"]) == 0
    rep = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert rep["clips"] == 2 and rep["mean"]["psnr_lit"] > 100 and rep["mean"]["psnr_refined"] < rep["mean"]["psnr_lit"]
    assert "refined - lit" in capsys.readouterr().out
    assert main(["eval-refiner", f"clips={tmp_path / 'ev'}", f"out={tmp_path / 'ev2'}"]) == 2  # one line, no run
    assert "holds no scene_*.npz clips" in capsys.readouterr().err and not (tmp_path / "ev2").exists()


@pytest.mark.slow
def test_recondition_keeps_targets_and_refuses_other_geometry(tmp_path):
    """Clips made by an older lit render get their conditions re-rendered from the stored scenario
    (the physics re-runs bit for bit), their Cycles targets kept; a file whose geometry no longer
    matches is refused and left untouched."""
    from hybridsim.training.pathtrace_data import (LIT_VERSION, DataError, _render_clip, lit_version,
                                                   random_photo_scene, recondition_clips)

    scen = random_photo_scene(5, frames=2, res=32, n_cameras=1, plain_floor=1.0, hdri=0.0)
    cond, _ = _render_clip(scen, 1)
    target = np.random.default_rng(0).integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8)
    stale = cond.copy()
    stale[:, :, :3] = 0  # an old lit render: other lighting channels, same geometry
    path = tmp_path / "scene_0000.npz"
    np.savez(path, cond=stale, target=target, scenario=json.dumps(scen.to_dict()))  # no lit_version: 1
    assert lit_version(path) == 1 and LIT_VERSION >= 2
    assert recondition_clips([path], progress=False) == 1
    with np.load(path) as z:
        np.testing.assert_array_equal(z["cond"], cond)
        np.testing.assert_array_equal(z["target"], target)
    assert lit_version(path) == LIT_VERSION and recondition_clips([path], progress=False) == 0  # resumable

    moved = stale.copy()
    moved[:, :, 3] += 0.5  # depth: another physical state than the one Cycles drew
    np.savez(path, cond=moved, target=target, scenario=json.dumps(scen.to_dict()))
    before = path.read_bytes()
    with pytest.raises(DataError, match="other geometry"):
        recondition_clips([path], progress=False)
    assert path.read_bytes() == before


def test_photo_scene_default_light_option():
    """default_light keeps the spec's default sun and ambient (and a grey plain floor) without
    moving the scenes made before the option: default_light=0 draws nothing from the main stream."""
    import dataclasses

    from hybridsim.scenario.spec import Lighting
    from hybridsim.training.pathtrace_data import DataError, PTClipOptions, random_photo_scene

    for seed in range(6):
        base = random_photo_scene(seed, plain_floor=1.0)
        assert random_photo_scene(seed, plain_floor=1.0, default_light=0.0) == base
        d = random_photo_scene(seed, plain_floor=1.0, default_light=1.0)
        assert dataclasses.replace(d.lighting, environment=None) == Lighting()
        assert d.lighting.environment == base.lighting.environment  # the HDRI draw is unchanged
        floor = next(e for e in d.entities if e.type == "plane").appearance.color
        assert max(floor) - min(floor) <= 0.06 and 0.27 <= min(floor) <= max(floor) <= 0.68
        assert [e.name for e in d.entities] == [e.name for e in base.entities]
    with pytest.raises(DataError, match="default_light=1.5"):
        PTClipOptions(default_light=1.5).check()
    with pytest.raises(DataError, match="robot=1.5"):
        PTClipOptions(robot=1.5).check()


@pytest.mark.parametrize("option", ["default_light", "robot", "procedural"])
def test_a_clip_folder_made_before_an_option_resumes_only_without_it(tmp_path, option):
    """A folder whose clips.json lacks an option (made before it existed) was made with its neutral
    value 0: it resumes with that, and any other value is refused before a scene is made."""
    import dataclasses

    from hybridsim.training.pathtrace_data import DataError, PTClipOptions, make_pathtraced_clips

    meta = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(PTClipOptions()).items()}
    del meta[option]
    (tmp_path / "clips.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"'{option}': \(0.0, 0.5\)"):
        make_pathtraced_clips(tmp_path, PTClipOptions(**{option: 0.5}), progress=False)
    assert not list(tmp_path.glob("scene_*"))


def test_a_robot_clip_folder_made_by_an_older_arm_placement_is_not_resumed(tmp_path):
    """Folders with robots record the arm generator (ARM_GENERATOR): one made before the arm kept
    clear of the objects (no entry: generator 1) is refused, so one folder never mixes two; folders
    without robots are not affected."""
    import dataclasses

    from hybridsim.training.pathtrace_data import DataError, PTClipOptions, make_pathtraced_clips
    from hybridsim.training.refine_data import ARM_GENERATOR, arm_generator_option, folder_options

    meta = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(PTClipOptions(robot=0.5)).items()}
    (tmp_path / "clips.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"'arm_generator': \(1, {ARM_GENERATOR}\)"):
        make_pathtraced_clips(tmp_path, PTClipOptions(robot=0.5), progress=False)
    assert not list(tmp_path.glob("scene_*"))
    no_robot = {**meta, "robot": 0.0}
    (tmp_path / "clips.json").write_text(json.dumps(no_robot))
    assert folder_options(tmp_path / "clips.json", {**no_robot, **arm_generator_option(0.0)}, {"arm_generator": 1})


def test_a_sampled_roughness_reaches_the_lit_render_and_the_refiner():
    """A scenario whose appearance is a distribution runs through the lit render and the refiner:
    their material table comes from the sampled episode, not from the template (whose roughness is
    still a Uniform)."""
    from hybridsim.output.runner import resolve_config
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import frame_stream

    cfg, base = resolve_config("default", ["+scenario.entities.ball.appearance.roughness={uniform: [0.1, 0.9]}"],
                               progress=False)
    cfg.scenario.timing.duration = 2 / cfg.scenario.timing.fps + 1e-6
    sim = Simulation(cfg, base_dir=base)
    try:
        drawn = next(e for e in sim.episodes[0].entities if e.name == "ball").appearance.roughness
        ball = 1 + [e.name for e in sim.episodes[0].entities].index("ball")
        assert 0.1 <= drawn <= 0.9 and abs(float(sim.materials[ball, 0]) - drawn) < 1e-6
        stream, _ = frame_stream(cfg, sim)
        frames = list(stream)
        assert len(frames) == 2 and all(f.refined for f in frames)
    finally:
        sim.close()

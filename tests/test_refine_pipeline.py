"""The refiner inside hybridsim: streaming in the frame loop, run outputs, paired clips, training
command, shipped default weights and the held-out evaluation."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hybridsim
from hybridsim.config import RefineSettings

from hybridsim.output.writers import read_video as _decode

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from refine.testing import tiny_model

    path = tmp_path_factory.mktemp("tiny") / "refiner"
    tiny_model(0, sample_height=48, sample_width=64).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- streaming


def _fake_sim(n_envs=2, cams=(("a", 16, 16), ("b", 32, 16))):
    from hybridsim.scenario.spec import Lighting

    cameras = {n: SimpleNamespace(name=n, width=w, height=h) for n, w, h in cams}
    return SimpleNamespace(cameras=cameras, cfg=SimpleNamespace(n_envs=n_envs), seeds=[11, 12][:n_envs],
                           scenario=SimpleNamespace(lighting=Lighting(direction=(0.3, -0.2, -1.0))))


def _fake_frames(sim, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        gb = {}
        for c in sim.cameras.values():
            B, H, W = sim.cfg.n_envs, c.height, c.width
            gb[c.name] = SimpleNamespace(rgb=torch.rand(B, 1, H, W, 3, generator=g),
                                         depth=1 + torch.rand(B, 1, H, W, generator=g),
                                         alpha=torch.rand(B, 1, H, W, generator=g),
                                         flow=torch.randn(B, 1, H, W, 2, generator=g))
        params = {c.name: SimpleNamespace(K=np.tile([[20.0, 0, c.width / 2], [0, 20.0, c.height / 2], [0, 0, 1]],
                                                    (sim.cfg.n_envs, 1, 1)),
                                          viewmat=np.tile(np.eye(4), (sim.cfg.n_envs, 1, 1)))
                  for c in sim.cameras.values()}
        out.append(SimpleNamespace(index=i, gbuffer=gb, cameras=params))
    return out


@pytest.mark.parametrize("channels,overlap", [(7, False), (14, False), (14, True)])
def test_streaming_equals_offline_refinement_and_keeps_order(channels, overlap):
    """Frame-by-frame streaming gives exactly what refining the whole video at once gives, with the
    plain G-buffer condition (7 channels) and with the shading cues (14); the same with the model
    on its worker thread (overlap)."""
    from refine import Refiner
    from refine.testing import tiny_model

    from hybridsim.refining import condition_from_gbuffer
    from hybridsim.refining import StreamRefiner, refined_frames
    from hybridsim.scenario.seeding import derive_seed

    model = tiny_model(0, cond_channels=channels)
    sim = _fake_sim()
    frames = _fake_frames(sim, 7)  # 3 full blocks of 2 and a partial one
    lighting = sim.scenario.lighting if channels == 14 else None
    sr = StreamRefiner(RefineSettings(device="cpu"), sim, model=model)
    out = list(refined_frames(iter(frames), sr, overlap=overlap))
    assert [f.index for f in out] == list(range(7))
    assert sr.timings["refine_blocks"] == 4
    for cam in sim.cameras.values():
        cond = torch.cat([condition_from_gbuffer(f.gbuffer[cam.name], f.cameras[cam.name], lighting)
                          for f in frames], 1)
        assert cond.shape[2] == channels
        ref = Refiner(model, height=cam.height, width=cam.width)
        seeds = [derive_seed(s, "refine", cam.name) % (2**63) for s in sim.seeds]
        want = ref.refine_video(cond, seed=seeds)  # [B, T, 3, H, W]
        want = want.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        got = np.stack([f.refined[cam.name] for f in out], 1)
        assert got.shape == (2, 7, cam.height, cam.width, 3)
        np.testing.assert_array_equal(got, want)


def test_streaming_emits_each_block_as_soon_as_it_is_complete():
    from refine.testing import tiny_model

    from hybridsim.refining import StreamRefiner

    sim = _fake_sim(n_envs=1, cams=(("a", 16, 16),))
    sr = StreamRefiner(RefineSettings(device="cpu"), sim, model=tiny_model(0))
    emitted = [len(sr.push(f)) for f in _fake_frames(sim, 5)]
    assert emitted == [0, 2, 0, 2, 0] and len(sr.flush()) == 1 and sr.flush() == []


@pytest.mark.parametrize("overlap", [False, True])
def test_failure_upstream_still_yields_received_frames(overlap):
    from refine.testing import tiny_model

    from hybridsim.refining import StreamRefiner, refined_frames

    sim = _fake_sim(n_envs=1, cams=(("a", 16, 16),))
    frames = _fake_frames(sim, 3)

    def upstream():
        yield from frames
        raise RuntimeError("physics blew up")

    got = []
    sr = StreamRefiner(RefineSettings(device="cpu"), sim, model=tiny_model(0))
    with pytest.raises(RuntimeError, match="blew up"):
        for f in refined_frames(upstream(), sr, overlap=overlap):
            got.append(f.index)
    assert got == [0, 1, 2] and all(f.refined["a"].shape == (1, 16, 16, 3) for f in frames)


def _refiner_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "hybridsim-refiner"]


def test_overlap_looks_ahead_at_most_one_block_and_raises_worker_errors():
    """The simulation runs at most one block ahead of the model; an error on the worker thread
    reaches the consumer (after the frames finished before it), and no thread is left behind."""
    from refine.testing import tiny_model

    from hybridsim.refining import StreamRefiner, refined_frames

    sim = _fake_sim(n_envs=1, cams=(("a", 16, 16),))
    frames = _fake_frames(sim, 9)
    pulled = []

    def upstream():
        for f in frames:
            pulled.append(f.index)
            yield f

    sr = StreamRefiner(RefineSettings(device="cpu"), sim, model=tiny_model(0))
    for f in refined_frames(upstream(), sr, overlap=True):
        assert len(pulled) - 1 - f.index <= 2 * sr.frames_per_block - 1  # frames simulated past this one
    assert not _refiner_threads()

    real = sr.refine_block
    calls = []

    def failing(block):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("refiner broke")
        return real(block)

    sr.reset()
    sr.refine_block = failing
    got = []
    with pytest.raises(ValueError, match="refiner broke"):
        for f in refined_frames(iter(_fake_frames(sim, 9)), sr, overlap=True):
            got.append(f.index)
    assert got == [0, 1] and not _refiner_threads()


def test_overlap_stops_its_worker_when_the_consumer_stops_early():
    from refine.testing import tiny_model

    from hybridsim.refining import StreamRefiner, refined_frames

    sim = _fake_sim(n_envs=1, cams=(("a", 16, 16),))
    sr = StreamRefiner(RefineSettings(device="cpu"), sim, model=tiny_model(0))
    stream = refined_frames(iter(_fake_frames(sim, 9)), sr, overlap=True)
    assert next(stream).index == 0
    stream.close()
    assert not _refiner_threads()


def test_camera_size_not_multiple_of_patch_is_a_clear_error():
    from refine.testing import tiny_model

    from hybridsim.refining import StreamRefiner
    from hybridsim.scenario.spec import SpecError

    sim = _fake_sim(n_envs=1, cams=(("side", 18, 16),))
    with pytest.raises(SpecError, match="side.*patch size 4"):
        StreamRefiner(RefineSettings(device="cpu"), sim, model=tiny_model(0))


def test_bad_weights_folder_is_a_clear_error(tmp_path):
    from hybridsim.refining import load_model
    from hybridsim.scenario.spec import SpecError

    with pytest.raises(SpecError, match="not a folder"):
        load_model(RefineSettings(weights=str(tmp_path / "nope")), "cpu")
    (tmp_path / "config.json").write_text("{broken")
    from refine import RefineError

    with pytest.raises(RefineError):
        load_model(RefineSettings(weights=str(tmp_path)), "cpu")


# ---------------------------------------------------------------------------- run outputs


def test_run_writes_refined_and_compare_videos(tmp_path, tiny_weights):
    res = hybridsim.run(str(DATA / "drop.yaml"), ["scenario.timing.duration=0.65", f"refine.weights={tiny_weights}"],
                        out_dir=tmp_path / "run", progress=False)
    assert res.n_frames == 13  # an odd count: the last block is partial and still written
    refined, compare = _decode(res.out_dir / "refined_main.mp4"), _decode(res.out_dir / "compare_main.mp4")
    coarse, reference = _decode(res.out_dir / "coarse_main.mp4"), _decode(res.out_dir / "reference_main.mp4")
    assert len(refined) == len(compare) == 13
    assert refined[0].shape == (48, 64, 3) and compare[0].shape == (48, 192, 3)
    # compare = coarse | refined | reference. H.264 is lossy (and the untrained tiny model's output
    # is noise, which compresses badly), so each panel must be closest to its own video.
    videos = (coarse, refined, reference)
    for k in (0, 12):
        for panel in range(3):
            crop = compare[k][:, 64 * panel:64 * (panel + 1)].astype(int)
            diffs = [np.abs(crop - v[k].astype(int)).mean() for v in videos]
            assert int(np.argmin(diffs)) == panel and diffs[panel] < 12, diffs
    rec = json.loads((res.out_dir / "run.json").read_text())
    assert rec["timings"]["refine_blocks"] == 7 and rec["timings"]["refine_s"] > 0
    assert "refined_main.mp4" in rec["files"] and "compare_main.mp4" in rec["files"]
    # the timed impulse at 0.5 s (physics step 50, 5 steps per frame) is a ground-truth event label
    events = [json.loads(line) for line in (res.out_dir / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1
    ev = events[0]
    assert ev["env"] == 0 and ev["entities"] == ["ball"] and ev["step"] == 50 and ev["frame"] == 11
    assert ev["t"] == pytest.approx(0.5)
    assert rec["require"] == [None] and rec["end_frame"] == [12]


def test_refine_needs_the_splat_render(tmp_path):
    from hybridsim.cli import main

    rc = main(["run", f"scenario={DATA / 'drop.yaml'}", f"out_dir={tmp_path / 'r'}", "render.enabled=false",
               "scenario.timing.duration=0.1"])
    assert rc == 2


# ---------------------------------------------------------------------------- training data


def test_textured_box_mesh_has_extents_and_tiled_uvs(tmp_path, monkeypatch):
    import trimesh

    from hybridsim.training.refine_data import textured_box_obj

    monkeypatch.setenv("HYBRIDSIM_CACHE", str(tmp_path))
    path = textured_box_obj((0.4, 0.2, 0.1), tile=0.1)
    mesh = trimesh.load(path, process=False)
    np.testing.assert_allclose(mesh.bounds, [[-0.2, -0.1, -0.05], [0.2, 0.1, 0.05]], atol=1e-6)
    assert len(mesh.faces) == 12
    uv = mesh.visual.uv
    assert uv.shape == (24, 2) and uv.max() == pytest.approx(4.0)  # 0.4 m face / 0.1 m tile
    # outward normals: every face normal points away from the centre
    centers = mesh.triangles_center
    assert (np.einsum("ij,ij->i", mesh.face_normals, centers) > 0).all()


def test_random_scenes_are_valid_deterministic_and_varied():
    from hybridsim.training.refine_data import random_scene

    a, b = random_scene(5), random_scene(5)
    assert a.to_dict() == b.to_dict()
    scenes = [random_scene(s) for s in range(12)]
    assert len({len(s.entities) for s in scenes}) > 1
    from hybridsim.scenario.spec import Lighting

    default = sum(s.lighting == Lighting() for s in scenes)
    assert 1 <= default <= 6  # a quarter keep the scenario default light, the rest are random
    assert len({s.lighting.intensity for s in scenes}) == 12 - default + 1
    assert any(e.appearance.texture for s in scenes for e in s.entities)
    names = {"default", "stack_topple", "franka_push", "mesh_slope"}
    assert not names & {s.name for s in scenes}
    assert all(e.file is None or "duck" not in e.file for s in scenes for e in s.entities)  # mesh_slope held out


def test_random_scene_cameras_follow_the_elevation_range():
    import math

    from hybridsim.training.refine_data import ClipOptions, DataError, random_scene

    def elevations(scen):
        out = []
        for c in scen.cameras:
            d = np.subtract(c.pos, c.lookat)
            out.append(math.degrees(math.asin(d[2] / np.linalg.norm(d))))
        return out

    # the default range is the shipped data's, and other ranges change only the cameras
    steep = [random_scene(s, elevation=(80.0, 90.0)) for s in range(6)]
    flat = [random_scene(s) for s in range(6)]
    for a, b in zip(steep, flat):
        assert a.entities == b.entities and a.lighting == b.lighting
        assert all(18 - 3 < e < 60 + 3 for e in elevations(b))  # lookat is jittered by a few cm
        assert all(e > 75 for e in elevations(a))
        for c in a.cameras:  # looking down, up is horizontal (world z would be parallel to the view)
            assert c.up[2] == 0.0 and abs(np.linalg.norm(c.up) - 1) < 1e-9
    with pytest.raises(DataError, match="elevation"):
        ClipOptions(elevation=(60.0, 30.0)).check()


def test_random_scene_floor_and_light_probabilities():
    from hybridsim.training.refine_data import ClipOptions, DataError, random_scene
    from hybridsim.scenario.spec import Lighting

    # the defaults are the shipped data's thresholds (0.5 / 0.25), so default scenes are unchanged
    plain = [random_scene(s, plain_floor=1.0, default_light=1.0) for s in range(8)]
    slab = [random_scene(s, plain_floor=0.0, default_light=0.0) for s in range(8)]
    base = [random_scene(s) for s in range(8)]
    assert all(p.entities[0].type == "plane" and p.lighting == Lighting() for p in plain)
    assert all(q.entities[0].type == "mesh" and q.lighting != Lighting() for q in slab)
    assert {b.entities[0].type for b in base} == {"plane", "mesh"}
    assert base == [random_scene(s, plain_floor=0.5, default_light=0.25) for s in range(8)]
    for bad in ({"plain_floor": 1.5}, {"default_light": -0.1}):
        with pytest.raises(DataError, match=next(iter(bad))):
            ClipOptions(**bad).check()


def test_random_scene_robot_option():
    import math

    import trimesh

    from hybridsim.training.refine_data import ROBOT_MIMIC, ROBOTS, ClipOptions, DataError, _ArmKinematics, random_scene

    # scenes without an arm are the ones made before the option existed (values pinned then: the
    # main random stream is untouched), and with one only the arm, its event and the cameras change
    base4 = random_scene(4)
    assert random_scene(4, robot=0.0) == base4
    assert base4.lighting.intensity == pytest.approx(4.127036743209127, abs=1e-12)
    assert base4.entities[-1].pos[0] == pytest.approx(-0.14347612454097655, abs=1e-12)
    assert base4.cameras[0].pos == pytest.approx((0.7735416116320537, -0.9935034736213151, 1.9421640571691308),
                                                 abs=1e-12)
    robots = [random_scene(s, robot=1.0) for s in range(16)]
    assert robots[3] == random_scene(3, robot=1.0)  # deterministic
    files = set()
    for s, scen in enumerate(robots):
        base = random_scene(s)
        arm = scen.entities[-1]
        assert scen.entities[:-1] == base.entities and scen.lighting == base.lighting
        assert arm.type == "mjcf" and arm.semantic_class == "robot" and arm.pos[2] == 0.0
        files.add(arm.file)
        home, spread = next((h, d) for f, h, d in ROBOTS if f == arm.file)
        (event,) = scen.events
        assert event.kind == "joint_targets" and event.entity == "robot" and 0 < event.at < 4 / 20
        kin = _ArmKinematics.of(arm.file)
        yaw = math.radians(arm.euler[2])
        rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        for pose in (arm.joints, event.targets):
            assert set(pose) == set(home)
            assert all(abs(pose[j] - home[j]) <= spread.get(ROBOT_MIMIC.get(j, j), 0.0) + 1e-12 for j in home)
            assert all(pose[j] == pose[k] for j, k in ROBOT_MIMIC.items() if j in pose)
            # the hand (last link) is nearer the objects than the base: the arm reaches toward them
            hand = rot @ kin._bodies(pose)[-1][:2] + np.asarray(arm.pos[:2])
            assert np.linalg.norm(hand) < np.linalg.norm(arm.pos[:2]) - 0.1
        # beside the objects and clear of any table's corners
        table = next((e for e in base.entities if e.name == "table"), None)
        r = math.hypot(arm.pos[0], arm.pos[1])
        if table is not None:
            extent = table.size[:2] if table.size else np.ptp(trimesh.load(table.file).bounds[:, :2], 0)
            assert r >= math.hypot(*extent) / 2 + 0.25 - 1e-9
        assert r >= 0.6
    assert files == {f for f, _, _ in ROBOTS}
    assert sum(random_scene(s, robot=0.5).entities[-1].type == "mjcf" for s in range(40)) in range(12, 29)
    with pytest.raises(DataError, match="robot"):
        ClipOptions(robot=1.5).check()


def test_arm_kinematics_rejects_poses_through_the_floor_and_the_table():
    from hybridsim.training.refine_data import ROBOTS, _ArmKinematics

    file, home, _ = ROBOTS[0]  # the Panda: home is upright enough to clear the floor
    kin = _ArmKinematics.of(file)
    assert kin.clear(home, (1.0, 0.0, 0.0), 0.0, None)
    assert not kin.clear(home, (0.0, 0.0, -0.5), 0.0, None)  # sunk half a metre into the floor
    # a table in the way of the arm, at hand height, and the same table out of reach
    assert not kin.clear(home, (-0.6, 0.0, 0.0), 0.0, (0.8, 0.8, 0.45))
    assert kin.clear(home, (-2.0, 0.0, 0.0), 0.0, (0.8, 0.8, 0.45))
    assert abs(kin.reach_azimuth(home)) < 0.2  # the Panda reaches along its base's +x
    # an object's spawn sphere where the upright arm stands, and the same sphere a metre away
    assert not kin.clear(home, (1.0, 0.0, 0.0), 0.0, None, [((1.0, 0.0, 0.5), 0.1)])
    assert kin.clear(home, (1.0, 0.0, 0.0), 0.0, None, [((-0.5, 0.0, 0.5), 0.1)])


def test_random_robot_scenes_keep_the_arm_clear_of_the_dropped_objects():
    import math

    from hybridsim.training.refine_data import ROBOT_CLEARANCE, _ArmKinematics, random_scene
    for seed in range(12):
        scen = random_scene(seed, robot=1.0)
        arm = next(e for e in scen.entities if e.name == "robot")
        kin = _ArmKinematics.of(arm.file)
        goal = next(ev for ev in scen.events if ev.entity == "robot").targets
        yaw = math.radians(arm.euler[2])
        for e in (e for e in scen.entities if e.name.startswith("obj")):
            # a sphere of just the object's own bounding radius, without the jitter margin
            r = e.radius if e.type == "sphere" else (math.hypot(e.radius, e.height / 2) if e.type == "cylinder" else None)
            if r is None:
                continue  # boxes: their size is in the mesh file or `size`; spheres and cans suffice here
            for joints in (arm.joints, goal):
                assert kin.clear(joints, arm.pos, yaw, None, [(e.pos, r - ROBOT_CLEARANCE)]), (seed, e.name)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from hybridsim.training.refine_data import ClipOptions, make_clips

    out = tmp_path_factory.mktemp("clips")
    opts = ClipOptions(scenes=1, frames=4, res=32, n_envs=1, n_cameras=1, seed=3)
    return out, opts, make_clips(out, opts, progress=False)


def test_npz_array_reads_slices_of_stored_and_compressed_members(tmp_path):
    """Clip arrays are read one first-axis slice at a time: the same values as np.load for stored
    (np.savez) and compressed files, in C and Fortran order; fresh writable arrays;
    no file left open; a file cut short is a DataError, not garbage."""
    import os

    from hybridsim.training.refine_data import DataError, NpzArray

    rng = np.random.default_rng(0)
    arrays = {"cond": rng.normal(size=(2, 3, 5, 4)).astype(np.float16),
              "target": rng.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8),
              "fortran": np.asfortranarray(rng.normal(size=(7, 9)))}
    np.savez(tmp_path / "a.npz", scenario="{}", **arrays)
    np.savez_compressed(tmp_path / "b.npz", **arrays)
    fds = len(os.listdir("/proc/self/fd"))
    members = [NpzArray(tmp_path / n, k) for n in ("a.npz", "b.npz") for k in arrays]
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing kept open
    for m in members:
        want = arrays[m.key]
        assert m.shape == want.shape and m.dtype == want.dtype and len(m) == want.shape[0]
        for k in (0, 1, -1):
            got = m[k]
            np.testing.assert_array_equal(got, want[k])
            assert got.flags.writeable
        np.testing.assert_array_equal(m.read(), want)
    with pytest.raises(IndexError):
        members[0][2]
    with pytest.raises(DataError, match="array 'missing'"):
        NpzArray(tmp_path / "a.npz", "missing")
    cut = tmp_path / "cut.npz"
    cut.write_bytes((tmp_path / "a.npz").read_bytes()[:200])
    with pytest.raises(DataError, match="no clip file"):
        NpzArray(cut, "cond")
    # a file replaced by a shorter one after it was opened (not by this project's atomic writers)
    np.savez(cut, cond=arrays["cond"])
    m = NpzArray(cut, "cond")
    np.savez(cut, cond=arrays["cond"][:1])
    with pytest.raises(DataError, match="cut short"):
        m[1]


def test_paired_clips_hold_srgb_condition_and_reference_target(clip_dir):
    from hybridsim.training.refine_data import ClipDataset

    _, _, files = clip_dir
    ds = ClipDataset(files)
    assert len(ds) == 1 and ds.describe(0) == f"{files[0]} clip 0"
    cond, target = ds[0]
    assert cond.shape == (4, 14, 32, 32) and target.shape == (4, 3, 32, 32)
    torch.testing.assert_close(ClipDataset(files, channels=7)[0][0], cond[:, :7])
    normal_len = cond[:, 7:10].norm(dim=1)
    assert ((normal_len - 1).abs() < 1e-2).float()[cond[:, 4] > 0.99].mean() > 0.9  # unit normals on surfaces
    assert float(cond[:, 10:13].min()) >= 0 and float(cond[:, 10:13].max()) > 0.1  # something is lit
    assert 0 <= float(target.min()) and float(target.max()) <= 1 and float(target.std()) > 0.01
    covered = cond[:, 4] > 0.99
    assert covered.float().mean() > 0.2
    # coarse and reference agree roughly where the splats cover (same camera, same state)
    err = (cond[:, :3] - target).abs().mean(1)[covered].mean()
    assert float(err) < 0.25


def test_make_clips_resumes_and_refuses_other_options(clip_dir):
    from hybridsim.training.refine_data import ClipOptions, DataError, make_clips

    out, opts, files = clip_dir
    before = files[0].stat().st_mtime_ns
    assert make_clips(out, opts, progress=False) == files
    assert files[0].stat().st_mtime_ns == before  # finished scenes are not redone
    with pytest.raises(DataError, match="other options"):
        make_clips(out, ClipOptions(scenes=1, frames=5, res=32, n_envs=1, n_cameras=1, seed=3), progress=False)
    with pytest.raises(DataError, match="elevation"):
        make_clips(out, ClipOptions(scenes=1, frames=4, res=32, n_envs=1, n_cameras=1, seed=3, elevation=(5.0, 90.0)),
                   progress=False)
    # a folder written before the elevation option existed still resumes with the default range
    meta = json.loads((out / "clips.json").read_text())
    (out / "clips.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "elevation"}))
    assert make_clips(out, opts, progress=False) == files


def test_make_clips_skips_a_scene_that_stalls_and_remembers_it(tmp_path):
    """A scene that makes no progress within scene_timeout is killed, skipped and recorded, so a
    resumed run does not wait for it again (the guard against a renderer that spins forever)."""
    from hybridsim.training.refine_data import ClipOptions, make_clips

    opts = ClipOptions(scenes=1, frames=2, res=32, n_envs=1, n_cameras=1, seed=4)
    assert make_clips(tmp_path, opts, progress=False, scene_timeout=0.5) == []
    assert json.loads((tmp_path / "clips.json").read_text())["skipped"] == [0]
    assert make_clips(tmp_path, opts, progress=False) == []  # remembered: not retried


def test_train_refiner_trains_resumes_and_installs(clip_dir, tmp_path, monkeypatch):
    import refine

    from hybridsim.training.train_refiner import DEFAULTS, train_refiner

    src, _, _ = clip_dir
    out = tmp_path / "train"
    (out / "clips").parent.mkdir(parents=True)
    import shutil

    shutil.copytree(src, out / "clips")
    dest = tmp_path / "weights"
    monkeypatch.setattr(refine, "DEFAULT_WEIGHTS_DIR", dest)
    opts = dict(DEFAULTS, out=str(out), scenes=1, frames=4, res=32, n_envs=1, cameras=1, data_seed=3, robot=0.0,
                phase1=2, phase2=1, phase3=1, sigmas="0.2,0.1", ssim=0.2, batch=1, clip_frames=4, checkpoint_every=1,
                progress=False, install=True)
    rec = train_refiner(opts, command="hybridsim train-refiner test")
    assert rec["steps"] == 4 and np.isfinite(rec["final_loss"])
    phases = [json.loads(line)["phase"] for line in (out / "train" / "loss.jsonl").read_text().splitlines()]
    assert phases == [1, 1, 2, 3]
    assert json.loads((dest / "sampler.json").read_text())["sigmas"] == [0.2, 0.1]  # ships with the weights
    model_cfg = json.loads((dest / "config.json").read_text())
    assert model_cfg["cond_channels"] == 14 and model_cfg["head_channels"] == 16
    assert (dest / "diffusion_pytorch_model.safetensors").is_file()
    saved = json.loads((dest / "training.json").read_text())
    assert saved["command"] == "hybridsim train-refiner test" and saved["data_seed"] == 3
    again = train_refiner(dict(opts, install=False))
    assert again["resumed_from_step"] == 4 and again["steps"] == 4  # nothing left to do
    assert again["final_loss"] == rec["final_loss"]  # read back from the loss log

    # fine-tune from the installed model: starts from its weights, records where it came from
    from refine.model import CausalWanRefiner

    ft_out = tmp_path / "finetune"
    shutil.copytree(src, ft_out / "clips")
    ft = train_refiner(dict(opts, out=str(ft_out), init=str(dest), phase1=0, phase2=1, phase3=0, temporal=1.0,
                            noise="static", install=False, extra_clips=str(src)))
    assert ft["init"]["folder"] == str(dest.resolve()) and ft["init"]["training"]["command"] == saved["command"]
    # extra_clips: another clip folder's scenes are trained on too, and recorded
    assert ft["clips"] == 2 * rec["clips"] and [e["folder"] for e in ft["extra_clips"]] == [str(src.resolve())]
    assert ft["extra_clips"][0]["scenes"] == 1 and "files" not in ft["extra_clips"][0]
    assert ft["steps"] == 1 and ft["sampler"]["noise"] == "static"
    start = CausalWanRefiner.from_pretrained(dest).state_dict()
    tuned = CausalWanRefiner.from_pretrained(ft_out / "train" / "model").state_dict()
    fresh = CausalWanRefiner.from_spec(CausalWanRefiner.from_pretrained(dest).spec).state_dict()
    gap = lambda a: sum(float((a[k] - tuned[k]).abs().sum()) for k in tuned)  # noqa: E731
    assert 0 < gap(start) < gap(fresh)  # one step away from the init, far from a fresh model


def refine_weights():
    from refine import DEFAULT_WEIGHTS_DIR

    return DEFAULT_WEIGHTS_DIR


def test_train_refiner_cli_rejects_bad_elevation(capsys):
    from hybridsim.cli import main

    for bad in ("elevation=10", "elevation=a,b", "elevation=20,95"):
        assert main(["train-refiner", bad]) == 2
        assert "train-refiner elevation" in capsys.readouterr().err
    for bad, key in (("plain=1.5", "plain"), ("default_light=-1", "default_light")):
        assert main(["train-refiner", bad]) == 2
        assert f"train-refiner {key}" in capsys.readouterr().err


def test_train_refiner_cli_rejects_bad_options(capsys, tmp_path):
    from hybridsim.cli import main
    from refine import CausalWanRefiner

    # every call starts from a tiny job in tmp (the bad option, named last, overrides it): should a check
    # ever stop firing, the test fails in seconds instead of making clips and training for 40 minutes
    tiny = [f"out={tmp_path / 'never'}", "scenes=1", "phase1=1", "phase2=0", "progress=false"]

    def train_refiner(*opts: str) -> int:
        return main(["train-refiner", *tiny, *opts])

    assert train_refiner("scenes=0") == 2
    assert "scenes: must be > 0" in capsys.readouterr().err
    assert train_refiner("lr=fast") == 2
    assert "expected float" in capsys.readouterr().err
    assert train_refiner("sigmas=0.1,0.2") == 2
    assert "strictly decreasing" in capsys.readouterr().err
    assert train_refiner("head=-1") == 2
    assert train_refiner("grad=-1") == 2
    assert "train-refiner grad" in capsys.readouterr().err
    assert train_refiner("robot=1.5") == 2
    assert "train-refiner robot" in capsys.readouterr().err
    assert train_refiner("noise=warped") == 2
    assert "train-refiner noise" in capsys.readouterr().err
    assert train_refiner("temporal=-0.5") == 2
    assert train_refiner("loss=l2") == 2
    assert "train-refiner loss" in capsys.readouterr().err  # names the choices: mse, charbonnier
    assert train_refiner(f"extra_clips={tmp_path / 'no_clips'}") == 2
    assert "no_clips has no clips.json" in capsys.readouterr().err
    other = tmp_path / "other_clips"
    other.mkdir()
    (other / "clips.json").write_text(json.dumps({"frames": 12, "res": 64, "target": "raster"}))
    assert train_refiner(f"extra_clips={other}") == 2
    assert "'res': 64" in capsys.readouterr().err  # names what differs
    stale = tmp_path / "stale"
    (stale / "clips").mkdir(parents=True)
    np.savez(stale / "clips" / "scene_0000.npz", cond=np.zeros((1, 2, 21, 8, 8), np.float16),
             target=np.zeros((1, 2, 8, 8, 3), np.uint8), scenario=np.array("{}"))  # made by lit render 1
    assert main(["train-refiner", f"out={stale}", "target=pathtraced", "scenes=1", "phase1=1", "progress=false"]) == 2
    assert "recondition=true" in capsys.readouterr().err  # refused before any clip or step is made
    for bad in ("unpatchify=pixelshuffle", "unpatchify=smooth head=0"):
        assert train_refiner(*bad.split()) == 2
        assert "train-refiner unpatchify" in capsys.readouterr().err
    shipped = CausalWanRefiner.load_config(refine_weights())["unpatchify"]
    other = "linear" if shipped == "smooth" else "smooth"
    assert train_refiner("init=" + str(refine_weights()), f"unpatchify={other}") == 2
    assert f"unpatchify={shipped!r}" in capsys.readouterr().err  # names the shipped model's layout
    assert train_refiner("init=/nonexistent/weights") == 2
    assert "train-refiner init" in capsys.readouterr().err
    assert train_refiner("init=" + str(refine_weights()), "head=0") == 2
    assert "train-refiner head: 0 but the init model" in capsys.readouterr().err
    assert train_refiner("train_only=decoder") == 2
    err = capsys.readouterr().err
    assert "train-refiner train_only" in err and "pixel_head" in err  # names the model's modules
    assert not (tmp_path / "never").exists()


def test_sampler_noise_comes_from_the_weights_unless_the_run_names_it(tmp_path):
    from hybridsim.config import RefineSettings
    from hybridsim.refining import sampler_config
    from hybridsim.scenario.spec import SpecError

    (tmp_path / "sampler.json").write_text(json.dumps({"sigmas": [0.2, 0.1], "noise": "static"}))
    saved = sampler_config(RefineSettings(), tmp_path)
    assert saved.sigmas == (0.2, 0.1) and saved.noise == "static"
    fresh = sampler_config(RefineSettings(noise="fresh"), tmp_path)
    assert fresh.sigmas == (0.2, 0.1) and fresh.noise == "fresh"
    assert sampler_config(RefineSettings(sigmas=[0.5], noise="static")).noise == "static"
    assert sampler_config(RefineSettings()).noise == "fresh"  # refine's default, no folder
    with pytest.raises(SpecError, match="refine.noise.*static"):
        sampler_config(RefineSettings(noise="warm"), tmp_path)


# ---------------------------------------------------------------------------- default weights, eval


def test_default_weights_are_shipped_and_recorded():
    from refine import DEFAULT_WEIGHTS_DIR, load_default_model

    model = load_default_model()
    spec = model.spec
    assert spec.sample_height >= 128 and spec.out_channels == 3
    size = (Path(DEFAULT_WEIGHTS_DIR) / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 20e6
    rec = json.loads((Path(DEFAULT_WEIGHTS_DIR) / "training.json").read_text())
    assert rec["command"].startswith("hybridsim train-refiner") and "data_seed" in rec and rec["steps"] > 0
    from hybridsim.config import RefineSettings
    from hybridsim.refining import sampler_config

    shipped = sampler_config(RefineSettings(), Path(DEFAULT_WEIGHTS_DIR))  # what `hybridsim run` samples with
    assert shipped.sigmas == (0.1,) and shipped.noise == "zero"  # one deterministic step
    assert shipped.clean_pass is False  # session 10: trained with direct_loss, so no cache-writing clean pass


def test_warp_back_undoes_a_known_shift():
    from hybridsim.training.evaluate import temporal_stats, warp_back

    rng = np.random.default_rng(0)
    prev = rng.random((16, 20, 3)).astype(np.float32)
    cur = np.roll(prev, 2, axis=1)  # content moved 2 px right
    flow = np.zeros((16, 20, 2), np.float32)
    flow[..., 0] = 2.0
    np.testing.assert_allclose(warp_back(prev, flow)[:, 2:], cur[:, 2:], atol=1e-6)
    seq = [(prev * 255).astype(np.uint8), (cur * 255).astype(np.uint8)]
    alpha = np.ones((16, 20))
    alpha[:, :2] = 0  # the columns that np.roll wrapped around are not a motion
    alpha = [alpha] * 2
    stats = temporal_stats(seq, seq, seq, [flow, flow], alpha)
    assert stats["flicker_refined"] == 0.0 and stats["refined"] < 0.02


def test_sample_prediction_head_returns_the_velocity_its_x0_implies(tmp_path):
    """prediction="sample": the network outputs x0_hat; forward returns (x - x0_hat) / sigma so the
    sampler's x0 = x - sigma * v is exactly the network output. Same weights as a velocity model."""
    from refine.model import CausalWanRefiner
    from refine.testing import tiny_model

    vel, smp = tiny_model(3), tiny_model(3, prediction="sample")
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 3, 16, 16, generator=g), torch.rand(2, 4, 7, 16, 16, generator=g)
    t = torch.tensor([[750.0, 750.0, 250.0, 250.0], [500.0, 500.0, 100.0, 100.0]])
    with torch.no_grad():
        raw, v = vel(x, cond, t), smp(x, cond, t)
    sigma = (t / 1000)[:, :, None, None, None]
    torch.testing.assert_close(x - sigma * v, raw, atol=1e-5, rtol=1e-5)
    smp.save_pretrained(tmp_path / "m")
    assert CausalWanRefiner.from_pretrained(tmp_path / "m").spec.prediction == "sample"


def test_sample_prediction_trains_on_the_x0_error():
    from refine.layout import FrameLayout  # noqa: F401  (the loss builds the teacher-forcing layout)
    from refine.testing import tiny_model
    from refine.train import teacher_forcing_loss

    model = tiny_model(0, prediction="sample")
    g = torch.Generator().manual_seed(1)
    cond, target = torch.rand(1, 4, 7, 16, 16, generator=g), torch.rand(1, 4, 3, 16, 16, generator=g)
    sig = torch.tensor([[1e-4, 0.5]])  # a tiny sigma would blow a velocity loss up; the x0 loss stays bounded
    loss = teacher_forcing_loss(model, cond, target, sig, torch.zeros(1, 2), torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and float(loss.detach()) < 10

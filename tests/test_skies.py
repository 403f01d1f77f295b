"""Procedural environment maps (render/skies.py) and their use as training worlds."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("bpy")  # the EXR reader and writer are OpenImageIO from the bpy wheel

LUMA = np.array([0.2126, 0.7152, 0.0722])


def _upper_mean(img):
    h = img.shape[0]
    elev = ((1.0 - (np.arange(h) + 0.5) / h) - 0.5) * math.pi
    w = (np.cos(elev) * (elev > 0))[:, None]
    return float(((img @ LUMA) * w).sum() / (w.sum() * img.shape[1])), elev


def test_procedural_sky_is_deterministic_normalised_and_has_a_darker_ground():
    from render.skies import procedural_sky

    a = procedural_sky(3, height=64)
    assert a.shape == (64, 128, 3) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0
    np.testing.assert_array_equal(a, procedural_sky(3, height=64))
    assert not np.array_equal(a, procedural_sky(4, height=64))
    for seed in range(8):
        img = procedural_sky(seed, height=64)
        mean, elev = _upper_mean(img)
        assert abs(mean - 1.0) < 1e-4
        ground = float((img[elev < math.radians(-10)] @ LUMA).mean())
        assert 0.0 < ground < 1.0, (seed, ground)  # lit by the sky, never brighter than it


def test_graded_map_of_a_uniform_world_is_analytic():
    """A uniform grey world stays uniform in each hemisphere: mirroring and saturation do nothing,
    the white balance and contrast give one colour, and only the ground's level changes."""
    from render.skies import graded_map

    flat = np.full((32, 64, 3), 0.7, np.float32)
    for seed in range(5):
        g = graded_map(flat, seed)
        mean, elev = _upper_mean(g)
        assert abs(mean - 1.0) < 1e-5
        sky, ground = g[elev > 0].reshape(-1, 3), g[elev < 0].reshape(-1, 3)
        np.testing.assert_allclose(sky, np.broadcast_to(sky[0], sky.shape), rtol=1e-5)
        np.testing.assert_allclose(ground, np.broadcast_to(ground[0], ground.shape), rtol=1e-5)
        ratio = ground[0] / sky[0]
        assert np.allclose(ratio, ratio[0], rtol=1e-5) and 0.3 - 1e-6 <= ratio[0] <= 2.0 + 1e-6


def test_saved_map_reads_back_and_lights_like_any_hdri(tmp_path):
    from render.environment import Environment, env_radiance, irradiance, load_hdri, read_exr
    from render.errors import RenderError
    from render.skies import procedural_sky, save_environment

    img = procedural_sky(1, height=64)
    path = save_environment(tmp_path / "sky.exr", img)
    ch = read_exr(path)
    back = np.stack([ch["R"], ch["G"], ch["B"]], -1)
    np.testing.assert_allclose(back, img, rtol=2e-3, atol=1e-4)  # half floats
    assert not list(tmp_path.glob(".*"))  # no temp file left
    np.testing.assert_allclose(load_hdri(str(path)), back, rtol=1e-6)
    # a sun brighter than half floats hold is clipped, not written as inf; non-finite input is refused
    sun = img.copy()
    sun[3, 5] = 1e6
    ch = read_exr(save_environment(tmp_path / "sun.exr", sun))
    assert all(np.isfinite(ch[k]).all() for k in "RGB") and 6.4e4 < ch["R"][3, 5] <= 65504
    sun[3, 5] = np.inf
    with pytest.raises(RenderError, match="non-finite"):
        save_environment(tmp_path / "inf.exr", sun)
    import torch

    env = Environment(hdri=str(path), strength=2.0)
    up = torch.tensor([[0.0, 0.0, 1.0]])
    # radiance straight up is the map's top row (times strength); the irradiance of an upward normal,
    # the integral of L cos(theta), is near pi times the upper hemisphere's mean radiance (1 by the
    # map's normalisation, before strength) unless the sky is very uneven
    top = float(torch.from_numpy(back[0].mean(0)) @ torch.tensor(LUMA, dtype=torch.float32))
    assert abs(float(env_radiance(env, up)[0] @ torch.tensor(LUMA, dtype=torch.float32)) - 2 * top) < 0.1 * 2 * top
    e_up = float(irradiance(env, up)[0] @ torch.tensor(LUMA, dtype=torch.float32))
    assert 0.5 * 2 * math.pi < e_up < 1.5 * 2 * math.pi


def test_procedural_environment_files_are_cached_and_rebuilt_from_their_names(tmp_path, monkeypatch):
    from hybridsim.scenario.environments import procedural_file, rebuild
    from hybridsim.scenario.spec import SpecError
    from hybridsim.training.pathtrace_data import HELD_OUT_HDRIS, TRAIN_HDRIS, procedural_environment
    from render.environment import read_exr

    monkeypatch.setenv("HYBRIDSIM_CACHE", str(tmp_path))
    names = [procedural_environment(s) for s in range(500)]  # names only: nothing is made yet
    assert not (tmp_path / "environments").exists()
    kinds = {n.split(":")[0] for n in names}
    assert kinds == {"sky", "graded"} and 0.5 < sum(n.startswith("sky:") for n in names) / 500 < 0.7
    assert {n.split(":")[1] for n in names if n.startswith("graded:")} <= set(TRAIN_HDRIS)  # never held out
    assert not any(h in n for n in names for h in HELD_OUT_HDRIS)
    assert names[0] == "sky:0" and names[6] == "graded:city:6"
    path = procedural_file(names[0])
    assert path == tmp_path / "environments" / "sky1_0.exr" and procedural_file("sky:0") == path
    first = read_exr(path)
    path.unlink()
    # clips made before names were stored hold another machine's cache path: rebuilt here, same pixels
    again = read_exr(rebuild(f"/elsewhere/.cache/hybridsim/environments/{path.name}"))  # (the header holds a date)
    assert sorted(again) == sorted(first) and all(np.array_equal(again[k], first[k]) for k in first)
    assert rebuild("/elsewhere/holiday.exr") is None and rebuild("/x/graded1_mars_3.exr") is None
    # a cached map holding inf (written before bright suns were clipped) is made again, finite
    from render.environment import _oiio

    oiio = _oiio()
    img = np.stack([first["R"], first["G"], first["B"]], -1)
    img[0, 0, 0] = np.inf
    out = oiio.ImageOutput.create(str(path))  # written as save_environment did before the fix
    out.open(str(path), oiio.ImageSpec(img.shape[1], img.shape[0], 3, "half"))
    out.write_image(np.ascontiguousarray(img))
    out.close()
    assert not np.isfinite(read_exr(path)["R"]).all()
    from render.environment import load_hdri
    from render.errors import RenderError

    with pytest.raises(RenderError, match="non-finite radiance"):  # the lit render refuses such a map
        load_hdri(str(path))
    fixed = read_exr(procedural_file("sky:0"))
    assert all(np.array_equal(fixed[k], first[k]) for k in first)
    with pytest.raises(SpecError, match="unknown map 'mars'"):
        procedural_file("graded:mars:3")
    with pytest.raises(SpecError, match="non-negative integers"):
        procedural_file("sky:-1")


def test_a_scenario_names_a_procedural_environment(tmp_path, monkeypatch):
    """lighting.environment.hdri takes sky:<seed> / graded:<map>:<seed>, also as a distribution;
    bad names fail validation with one line; both renderers get the cached file."""
    import dataclasses

    from hybridsim.appearance import environment
    from hybridsim.scenario.distributions import Choice
    from hybridsim.scenario.spec import LightingEnvironment, SpecError, validate
    from hybridsim.training.pathtrace_data import random_photo_scene

    monkeypatch.setenv("HYBRIDSIM_CACHE", str(tmp_path))
    base = random_photo_scene(1, hdri=1.0)

    def lit_by(hdri):
        return dataclasses.replace(base, lighting=dataclasses.replace(
            base.lighting, environment=LightingEnvironment(hdri=hdri, rotation=30.0, strength=0.8)))

    validate(lit_by("sky:5"))
    validate(lit_by(Choice(options=("sky:5", "graded:forest:2", "city"))))
    env = environment(lit_by("graded:city:2"))
    assert env.hdri == str(tmp_path / "environments" / "graded1_city_2.exr") and env.rotation == 30.0
    for bad, msg in (("sky:five", "sky:<seed>"), ("graded:mars:2", "unknown map"), ("skies", "procedural map")):
        with pytest.raises(SpecError, match=msg):
            validate(lit_by(bad))
    assert not (tmp_path / "environments" / "sky1_5.exr").exists()  # validation makes nothing


def test_photo_scene_procedural_option(tmp_path, monkeypatch):
    """procedural=0 moves no scene made before the option; procedural=1 swaps every HDRI world's map
    for a procedural one (rotation and strength kept) and leaves ambient worlds alone."""
    import dataclasses

    from hybridsim.training.pathtrace_data import DataError, PTClipOptions, random_photo_scene

    monkeypatch.setenv("HYBRIDSIM_CACHE", str(tmp_path / "cache"))
    # values of random_photo_scene(seed) computed by the code before the option (d6e6a36)
    before = {0: (("sunrise", 44.285066, 0.887011), 4.290464), 1: (("night", 244.148802, 0.934699), 0.505656),
              2: (("sunrise", 46.784206, 0.5615), 2.545389), 3: (("courtyard", 129.414249, 0.894663), 1.979648),
              4: (None, 2.679521)}
    for seed, (env, intensity) in before.items():
        got = random_photo_scene(seed, procedural=0.0)
        e = got.lighting.environment
        assert (None if e is None else (e.hdri, round(e.rotation, 6), round(e.strength, 6))) == env
        assert round(got.lighting.intensity, 6) == intensity
    swapped = 0
    for seed in range(8):
        base = random_photo_scene(seed, robot=0.5)
        p = random_photo_scene(seed, robot=0.5, procedural=1.0)
        if base.lighting.environment is None:
            assert p == base
            continue
        swapped += 1
        assert p.lighting.environment.hdri.startswith(("sky:", "graded:"))
        assert dataclasses.replace(p.lighting.environment, hdri=base.lighting.environment.hdri) == \
            base.lighting.environment
        assert p.entities == base.entities and p.cameras == base.cameras
    assert swapped >= 4
    with pytest.raises(DataError, match="procedural=1.5"):
        PTClipOptions(procedural=1.5).check()  # (folder resumption: test_photoreal)


def test_train_refiner_refuses_a_bad_procedural_probability(tmp_path, capsys):
    from hybridsim.cli import main

    assert main(["train-refiner", f"out={tmp_path / 't'}", "target=pathtraced", "procedural=2"]) == 2
    assert "procedural" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_a_scene_whose_lit_condition_is_not_finite_is_never_written(tmp_path, monkeypatch):
    from hybridsim.training import pathtrace_data as pd

    def broken(scen, n_envs, ref_args=None):  # what an environment map holding inf gave (session 15)
        cond = np.zeros((2, 4, 21, 8, 8), np.float16)
        cond[:, :, 0] = np.nan
        return cond, [np.zeros((2, 8, 8, 3), np.uint8)] * 4

    monkeypatch.setattr(pd, "_render_clip", broken)
    with pytest.raises(pd.DataError, match="scene 0 of .* non-finite"):
        pd._make_scene(tmp_path, pd.PTClipOptions(scenes=1, frames=4, res=8, n_envs=1, n_cameras=2, hdri=0.0), 0)
    assert not list(tmp_path.iterdir())

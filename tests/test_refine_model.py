"""Model behaviour: per-frame timesteps, validation, parameterisation, package isolation."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import refine
from refine import ModelConfig, RefineError
from refine.testing import tiny_model

REFINE_DIR = Path(refine.__file__).resolve().parent


def _inputs(b=1, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, 3, 16, 16, generator=g), torch.rand(b, t, 7, 16, 16, generator=g),
            torch.rand(b, t, generator=g) * 1000)


def test_changing_one_frames_timestep_changes_only_its_modulation():
    model = tiny_model(frames_per_block=2)
    _, _, ts = _inputs()
    ts2 = ts.clone()
    ts2[0, 3] += 250.0
    with torch.no_grad():
        temb, mod = model.time_modulation(ts)  # [B, T, D], [B, T, 6, D]
        temb2, mod2 = model.time_modulation(ts2)
    changed = (mod2 - mod).abs().flatten(2).amax(-1)[0] > 0  # [T]
    assert changed.tolist() == [False, False, False, True, False, False]
    assert ((temb2 - temb).abs().amax(-1)[0] > 0).tolist() == changed.tolist()


def test_changing_one_frames_timestep_leaves_earlier_blocks_untouched():
    model = tiny_model(frames_per_block=2, window_frames=6)
    x, cond, ts = _inputs()
    ts2 = ts.clone()
    ts2[0, 3] += 250.0  # frame 3 = block 1
    with torch.no_grad():
        a, b = model(x, cond, ts), model(x, cond, ts2)
    per_frame = (a - b).abs().flatten(2).amax(-1)[0]  # [T]
    assert per_frame[:2].max() == 0  # block 0: exactly unchanged
    assert (per_frame[2:] > 1e-6).all()  # its own block (both frames) and later blocks react


def test_output_shape_and_validation():
    model = tiny_model()
    x, cond, ts = _inputs(2, 4)
    with torch.no_grad():
        assert model(x, cond, ts).shape == (2, 4, 3, 16, 16)
    with pytest.raises(RefineError, match="cond_channels"):
        model(x, cond[:, :, :5], ts)
    with pytest.raises(RefineError, match="timestep"):
        model(x, cond, ts[:, :1])
    with pytest.raises(RefineError, match="patch_size"):
        model(x[..., :15, :15], cond[..., :15, :15], ts)


@pytest.mark.parametrize("bad, match", [
    (dict(window_frames=1, frames_per_block=2), "window_frames"),
    (dict(attention_head_dim=5), "attention_head_dim"),
    (dict(sample_height=18), "multiple of patch_size"),
    (dict(cond_channels=2), "residual_space"),
])
def test_config_validation(bad, match):
    with pytest.raises(RefineError, match=match):
        ModelConfig(**{**dict(patch_size=4, sample_height=16, sample_width=16), **bad})


def test_residual_parameterisation_round_trip():
    model = tiny_model()
    _, cond, _ = _inputs(1, 2)
    rgb = torch.rand(1, 2, 3, 16, 16)
    x0 = model.to_diffusion(rgb, cond)
    torch.testing.assert_close(x0, 2.0 * (rgb - cond[:, :, :3]))
    torch.testing.assert_close(model.from_diffusion(x0, cond), rgb)
    assert model.coarse_x0(cond).abs().max() == 0  # a perfect coarse render is x0 = 0
    pixel = tiny_model(residual_space=False)
    torch.testing.assert_close(pixel.from_diffusion(pixel.coarse_x0(cond), cond), cond[:, :, :3])


def test_cross_attention_null_context_runs_cached():
    model = tiny_model(cross_attn_tokens=2, frames_per_block=1, window_frames=2)
    x, cond, ts = _inputs(1, 4)
    with torch.no_grad():
        ref = model(x, cond, ts)
        cache = model.new_cache(1, 16, 16)
        out = torch.cat([model.forward_cached(x[:, i:i + 1], cond[:, i:i + 1], ts[:, i:i + 1], cache, "append")
                         for i in range(4)], 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_refine_imports_no_sibling_stage():
    """refine/ is a leaf: no import of physics, render or hybridsim anywhere in it."""
    banned = {"physics", "render", "hybridsim"}
    for path in sorted(REFINE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_import_refine_is_light_and_local():
    code = ("import sys, refine; assert 'diffusers' not in sys.modules, 'diffusers imported eagerly'; "
            "assert 'torch' not in sys.modules, 'torch imported eagerly'; print(refine.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REFINE_DIR.parent, env={"PYTHONPATH": str(REFINE_DIR.parent), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().parent == REFINE_DIR


def test_encode_condition_channels():
    from refine.conditioning import encode_condition

    rgb = torch.rand(2, 3, 8, 8, 3)
    depth = torch.full((2, 3, 8, 8), 3.0)
    depth[0, 0, 0, 0] = float("inf")  # empty pixel
    alpha = torch.ones(2, 3, 8, 8)
    flow = torch.full((2, 3, 8, 8, 2), 8.0)
    cond = encode_condition(rgb, depth, alpha, flow)
    assert cond.shape == (2, 3, 7, 8, 8) and cond.dtype == torch.float32
    torch.testing.assert_close(cond[:, :, :3], rgb.movedim(-1, 2))
    assert cond[0, 0, 3, 0, 0] == 0 and cond[0, 0, 3, 1, 1] == 0.25
    assert cond[:, :, 5:].eq(0.5).all()
    with pytest.raises(RefineError, match="depth"):
        encode_condition(rgb, depth[..., :4], alpha, flow)

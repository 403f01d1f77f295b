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
    (dict(head_channels=-1), "head_channels"),
    (dict(unpatchify="pixelshuffle"), "unpatchify"),
    (dict(unpatchify="smooth"), "needs the pixel head"),
    (dict(unpatchify="guided"), "needs the pixel head"),
    (dict(unpatchify="guided", head_channels=4, cond_channels=4), "guide"),
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


def test_pixel_head_starts_at_the_coarse_render_and_round_trips(tmp_path):
    """Zero-initialised last conv: an untrained x0 model predicts x0 = 0, i.e. the coarse render,
    at every noise level; after training its output crosses patch borders; save/load keeps it."""
    from refine.model import CausalWanRefiner

    model = tiny_model(0, head_channels=4, prediction="sample")
    x, cond, ts = _inputs(1, 4)
    with torch.no_grad():
        v = model(x, cond, ts)
    sigma = (ts / 1000)[:, :, None, None, None]
    torch.testing.assert_close(x - sigma * v, torch.zeros_like(x), atol=1e-5, rtol=0)
    torch.nn.init.normal_(model.pixel_head[2].weight, std=0.1)
    model.save_pretrained(tmp_path / "m")
    back = CausalWanRefiner.from_pretrained(tmp_path / "m")
    assert back.spec.head_channels == 4 and back.pixel_head is not None
    with torch.no_grad():
        torch.testing.assert_close(back(x, cond, ts), model(x, cond, ts))
    plain = tiny_model(0)
    assert plain.pixel_head is None and "pixel_head.0.weight" not in plain.state_dict()


def test_smooth_unpatchify_adds_no_detail_where_the_render_is_flat(tmp_path):
    """unpatchify="smooth": the trunk's output reaches pixels as a bilinear field, so on a flat
    render (a smooth ramp as condition, zero sample) the output has no patch tile and no texture: its
    second differences are those of a bilinear field through a 2-conv head, far below the linear
    un-patchify's, whose p x p blocks are independent weights. Round-trips through save/load."""

    def roughness(model):
        x = torch.zeros(1, 2, 3, 16, 16)
        ramp = torch.linspace(0.2, 0.7, 16)
        cond = (ramp.view(16, 1) + 0.3 * ramp.view(1, 16)).expand(1, 2, 7, 16, 16)
        torch.nn.init.normal_(model.pixel_head[2].weight, std=0.3)
        with torch.no_grad():
            x0 = x - 0.5 * model(x, cond, torch.full((1, 2), 500.0))
        inner = x0[..., 2:-2, 2:-2]  # away from the convs' zero padding
        return float((inner[..., 2:, :] - 2 * inner[..., 1:-1, :] + inner[..., :-2, :]).abs().mean()
                     / inner.std())

    smooth = tiny_model(0, head_channels=4, prediction="sample", unpatchify="smooth")
    linear = tiny_model(0, head_channels=4, prediction="sample")
    assert smooth.proj_out.out_features == 4 and linear.proj_out.out_features == 4 * 4 * 4
    r_smooth, r_linear = roughness(smooth), roughness(linear)
    assert r_smooth < 0.25 * r_linear, (r_smooth, r_linear)
    _assert_round_trips(smooth, tmp_path)


def _assert_round_trips(model, tmp_path):
    """save_pretrained -> from_pretrained keeps the un-patchify mode and the outputs."""
    from refine.model import CausalWanRefiner

    model.save_pretrained(tmp_path / "m")
    back = CausalWanRefiner.from_pretrained(tmp_path / "m")
    assert back.spec.unpatchify == model.spec.unpatchify
    x, cond, ts = _inputs(1, 4)
    with torch.no_grad():
        torch.testing.assert_close(back(x, cond, ts), model(x, cond, ts))


def test_guided_upsample_is_bilinear_on_a_flat_guide_and_keeps_values_on_their_side_of_an_edge():
    """unpatchify="guided" (joint bilateral upsampling): with a constant guide it is exactly torch's
    bilinear upsample; across a sharp guide edge (left half 0, right half 1, token values 0 and 1
    likewise) the pixels next to the edge keep their own side's value, where bilinear blends them;
    the output is a convex combination of token values, and gradients reach the tokens."""
    import torch.nn.functional as Fn

    from refine.model import guided_upsample

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    flat = torch.full((2, 5, 32, 32), 0.4)
    bilinear = Fn.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(guided_upsample(x, flat, 0.1), bilinear, atol=1e-6, rtol=1e-6)
    noisy = torch.rand(2, 5, 32, 32, generator=g)
    out = guided_upsample(x, noisy, 0.1)
    lo, hi = x.amin((2, 3))[..., None, None], x.amax((2, 3))[..., None, None]
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    step = (torch.arange(32) >= 16).float()  # [W]: the edge falls on a token border (p = 8)
    guide = step.expand(1, 5, 32, 32).clone()
    values = (torch.arange(4) >= 2).float().expand(1, 1, 4, 4).clone()
    guided = guided_upsample(values, guide, 0.1)[0, 0]
    blended = Fn.interpolate(values, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert float(blended[:, 15].min()) > 0.4 and float(blended[:, 16].max()) < 0.6  # bilinear spills
    torch.testing.assert_close(guided, step.expand(32, 32), atol=1e-3, rtol=0)  # guided does not


def test_guided_unpatchify_runs_and_round_trips(tmp_path):
    model = tiny_model(0, head_channels=4, prediction="sample", unpatchify="guided")
    torch.nn.init.normal_(model.pixel_head[2].weight, std=0.1)
    assert model.proj_out.out_features == 4
    _assert_round_trips(model, tmp_path)


def _plane_depth(normal, offset, K, h, w):
    """Depth of the plane n . P = offset seen through K (OpenCV camera at the origin)."""
    u = torch.arange(w) + 0.5
    v = torch.arange(h) + 0.5
    rx = (u.view(1, w) - K[0, 2]) / K[0, 0]
    ry = (v.view(h, 1) - K[1, 2]) / K[1, 1]
    n = torch.tensor(normal)
    return offset / (n[0] * rx + n[1] * ry + n[2])  # z along the ray (x, y, 1)


def test_shading_cues_recover_plane_normals_and_lambert():
    from refine.conditioning import Lights, encode_condition, normals_from_depth

    K = torch.tensor([[24.0, 0, 16], [0, 24.0, 16], [0, 0, 1]])
    n_true = torch.tensor([0.0, -0.6, -0.8])  # tilted towards the camera and up (y is down)
    depth = _plane_depth(n_true.tolist(), -2.0, K, 32, 32)
    assert (depth > 0).all()
    depth = depth.expand(1, 1, 32, 32).contiguous()
    n = normals_from_depth(depth, depth > 0, K[None])
    torch.testing.assert_close(n[0, 0, :, 2:-2, 2:-2], n_true.view(3, 1, 1).expand(3, 28, 28), atol=1e-4, rtol=0)
    # light travelling along -n_true hits the plane head-on; rotate the world to check the viewmat
    rot = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # world -> camera rotation
    view = torch.eye(4)
    view[:3, :3] = rot
    lights = Lights(direction=tuple((rot.T @ -n_true).tolist()), color=(1.0, 0.5, 0.0), intensity=10.0,
                    ambient=(0.2, 0.2, 0.2))
    ones = torch.ones(1, 1, 32, 32)
    cond = encode_condition(torch.rand(1, 1, 32, 32, 3), depth, ones, torch.zeros(1, 1, 32, 32, 2),
                            K=K[None], viewmat=view[None], lights=lights)
    assert cond.shape == (1, 1, 14, 32, 32)
    mid = cond[0, 0, :, 16, 16]
    torch.testing.assert_close(mid[10:13], torch.tensor([2.0, 1.0, 0.0]), atol=1e-4, rtol=0)  # 10 / 5 * n.l
    assert mid[13] == pytest.approx(1.0)  # mean ambient 0.2 * 5
    empty = depth.clone()
    empty[..., :8] = float("inf")
    cond = encode_condition(torch.rand(1, 1, 32, 32, 3), empty, ones, torch.zeros(1, 1, 32, 32, 2),
                            K=K[None], viewmat=view[None], lights=lights)
    assert cond[0, 0, 7:13, :, :8].abs().max() == 0  # no surface, no normal, no light
    with pytest.raises(RefineError, match="together"):
        encode_condition(torch.rand(1, 1, 32, 32, 3), depth, ones, torch.zeros(1, 1, 32, 32, 2), K=K[None])

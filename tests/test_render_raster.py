"""Rasteriser tests: the fast CPU path against the per-pixel reference, geometry, flow, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from render import Gaussians, RenderError, intrinsics, look_at, rasterize, rasterize_reference

W, H = 32, 24


def _cameras(B: int, C: int, width: int = W, height: int = H):
    """[B, C, 4, 4] viewmats circling the origin at 3 m, [B, C, 3, 3] Ks (fov 50 deg)."""
    views = []
    for b in range(B):
        for c in range(C):
            ang = 0.4 * c + 0.25 * b
            eye = (3 * math.cos(ang), 3 * math.sin(ang), 0.8 + 0.3 * c)
            views.append(look_at(eye, (0.0, 0.0, 0.0)))
    K = intrinsics(50.0, width, height)
    return torch.stack(views).view(B, C, 4, 4), K.expand(B, C, 3, 3).clone()


def _random_gaussians(B: int = 2, N: int = 60, seed: int = 0, sh_degree: int | None = None) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    sh = None
    if sh_degree is not None:
        sh = 0.3 * torch.randn(N, (sh_degree + 1) ** 2, 3, generator=gen)
    return Gaussians(
        means=0.6 * torch.randn(B, N, 3, generator=gen),
        quats=torch.randn(B, N, 4, generator=gen),
        scales=0.02 + 0.15 * torch.rand(N, 3, generator=gen),
        opacities=0.05 + 0.94 * torch.rand(N, generator=gen),
        colors=torch.rand(N, 3, generator=gen),
        instance_id=torch.randint(0, 4, (N,), generator=gen, dtype=torch.int32),
        sh=sh,
    )


def _assert_gbuffers_close(a, b, atol=1e-4):
    for name in ("rgb", "depth", "alpha", "flow"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, atol=atol, rtol=0), (name, (x - y).abs().max().item())
    assert torch.equal(a.instance_id, b.instance_id)


@pytest.mark.parametrize("instance_mode, eps2d", [("instance", 0.0), ("gaussian", 0.0), ("instance", 0.3)])
def test_fast_path_matches_reference(instance_mode, eps2d):
    # Both paths blend in float32 with the same thresholds; they differ only in summation order
    # (cumprod vs a scalar loop in float64), so 1e-4 is ~100x the observed gap (~1e-6).
    g = _random_gaussians()
    viewmats, Ks = _cameras(2, 2)
    prev = g.means + 0.05 * torch.randn(g.means.shape, generator=torch.Generator().manual_seed(1))
    kw = dict(prev_means=prev, background=(0.1, 0.2, 0.3), instance_mode=instance_mode, eps2d=eps2d)
    ref = rasterize_reference(g, viewmats, Ks, W, H, **kw)
    fast = rasterize(g, viewmats, Ks, W, H, backend="torch", **kw)
    _assert_gbuffers_close(ref, fast)
    assert ref.rgb.shape == (2, 2, H, W, 3) and ref.flow.shape == (2, 2, H, W, 2)
    assert fast.instance_id.dtype == torch.int32
    assert (fast.alpha > 0.5).sum() > 200  # the scene actually covers the images
    assert fast.flow.abs().max() > 0.1


def test_fast_path_matches_reference_with_sh_and_tiles():
    g = _random_gaussians(B=1, N=40, seed=3, sh_degree=2)
    g.opacities[::5] = 0.9999  # exercises gsplat's alpha <= 0.999 clamp
    viewmats, Ks = _cameras(1, 2)
    ref = rasterize_reference(g, viewmats, Ks, W, H)
    for tile_size in (4, 8, 16):  # tiling changes the work, never the pixels
        _assert_gbuffers_close(ref, rasterize(g, viewmats, Ks, W, H, tile_size=tile_size))


@pytest.mark.parametrize("eps2d", [0.0, 0.3])
def test_pinned_values_of_a_small_scene(eps2d):
    g = _random_gaussians(B=1, N=30, seed=7)
    viewmats, Ks = _cameras(1, 1)
    out = rasterize(g, viewmats, Ks, W, H, eps2d=eps2d)
    # Values computed by this implementation and cross-checked against rasterize_reference.
    pin = _PINNED[eps2d]
    torch.testing.assert_close(out.alpha.sum(), torch.tensor(pin["alpha_sum"]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.rgb[0, 0, 12, 16], torch.tensor(pin["rgb_12_16"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.depth[0, 0, 12, 16], torch.tensor(pin["depth_12_16"]), atol=1e-4, rtol=0)


_PINNED = {
    0.3: {"alpha_sum": 80.97118, "rgb_12_16": [0.499979, 0.135208, 0.302217], "depth_12_16": 2.403277},
    0.0: {"alpha_sum": 54.59629, "rgb_12_16": [0.495208, 0.129063, 0.293939], "depth_12_16": 2.403828},
}


@pytest.mark.parametrize("eps2d", [0.0, 0.3])
def test_single_gaussian_projects_to_K_viewmat_pixel(eps2d):
    view = look_at((0.4, -2.0, 1.0), (0.0, 0.0, 0.2))
    K = intrinsics(60.0, W, H)
    # Place the Gaussian where K @ viewmat puts it at the centre of pixel (x=18, y=10).
    target_px = torch.tensor([18.5, 10.5])
    depth = 2.0
    cam = torch.cat(((target_px - K[:2, 2]) / K[[0, 1], [0, 1]] * depth, torch.tensor([depth])))
    world = torch.linalg.solve(view[:3, :3], cam - view[:3, 3])
    s, opacity = 0.04, 0.8  # ~0.4 px std: the next pixel still sees it without the eps2d blur
    g = Gaussians(means=world.view(1, 1, 3), quats=torch.tensor([[[1.0, 0, 0, 0]]]), scales=torch.full((1, 3), s),
                  opacities=torch.tensor([opacity]), colors=torch.tensor([[1.0, 0.5, 0.25]]),
                  instance_id=torch.tensor([5], dtype=torch.int32))
    out = rasterize(g, view.view(1, 1, 4, 4), K.view(1, 1, 3, 3), W, H, eps2d=eps2d)
    alpha = out.alpha[0, 0]
    assert divmod(int(alpha.argmax()), W) == (10, 18)
    torch.testing.assert_close(alpha[10, 18], torch.tensor(opacity))  # sigma = 0 at the centre
    torch.testing.assert_close(out.depth[0, 0, 10, 18], torch.tensor(depth))
    torch.testing.assert_close(out.rgb[0, 0, 10, 18], opacity * torch.tensor([1.0, 0.5, 0.25]))
    # One pixel to the right: EWA footprint s^2 J J^T + eps2d px^2 blur, J the pinhole Jacobian.
    x, y, z = cam.tolist()
    fx, fy = K[0, 0].item(), K[1, 1].item()
    j0 = torch.tensor([fx / z, 0.0, -fx * x / z**2], dtype=torch.float64)
    j1 = torch.tensor([0.0, fy / z, -fy * y / z**2], dtype=torch.float64)
    c00, c01, c11 = s**2 * j0 @ j0 + eps2d, s**2 * j0 @ j1, s**2 * j1 @ j1 + eps2d
    expected = opacity * torch.exp(-0.5 * c11 / (c00 * c11 - c01**2))
    torch.testing.assert_close(alpha[10, 19].double(), expected, rtol=1e-5, atol=0)
    assert out.instance_id[0, 0, 10, 18] == 5 and out.instance_id[0, 0, 0, 0] == 0


def _planar_cloud(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([1.6, 1.2]) - torch.tensor([0.8, 0.6])
    means = torch.cat((xy, torch.full((n, 1), 2.0)), dim=1)  # all at camera depth 2
    return Gaussians(means=means[None], quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4).clone(),
                     scales=torch.full((n, 3), 0.03), opacities=torch.full((n,), 0.7),
                     colors=torch.rand(n, 3, generator=gen), instance_id=torch.ones(n, dtype=torch.int32))


def test_flow_of_a_translated_cloud_and_warp():
    K = intrinsics(50.0, 48, 40).view(1, 1, 3, 3)
    view = torch.eye(4).view(1, 1, 4, 4)
    prev = _planar_cloud()
    shift_px = torch.tensor([2.3, -1.4])
    delta = torch.cat((shift_px * 2.0 / K[0, 0, [0, 1], [0, 1]], torch.zeros(1)))
    cur = Gaussians(prev.means + delta, prev.quats, prev.scales, prev.opacities, prev.colors, prev.instance_id)
    out = rasterize(cur, view, K, 48, 40, prev_means=prev.means)
    before = rasterize(prev, view, K, 48, 40)
    seen = out.alpha[0, 0] > 0.5
    assert seen.sum() > 300
    torch.testing.assert_close(out.flow[0, 0][seen], shift_px.expand(int(seen.sum()), 2), atol=1e-4, rtol=0)
    # frame_t(x) ~ frame_{t-1}(x - flow_t(x)): warping the previous frame by the flow beats no warp.
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    src = torch.stack((xs, ys), dim=-1) + 0.5 - out.flow[0, 0]
    grid = src / torch.tensor([48.0, 40.0]) * 2 - 1
    prev_img = before.rgb[0, 0].permute(2, 0, 1)[None]
    warped = F.grid_sample(prev_img, grid[None], align_corners=False)[0].permute(1, 2, 0)
    interior = seen.clone()
    interior[:4], interior[-4:], interior[:, :4], interior[:, -4:] = False, False, False, False
    err_warp = (warped - out.rgb[0, 0])[interior].abs().mean()
    err_none = (before.rgb[0, 0] - out.rgb[0, 0])[interior].abs().mean()
    assert err_warp < 0.25 * err_none, (err_warp, err_none)


def test_flow_is_zero_without_prev_means_and_for_static_gaussians():
    g = _random_gaussians(B=1)
    viewmats, Ks = _cameras(1, 1)
    assert rasterize(g, viewmats, Ks, W, H).flow.abs().max() == 0
    assert rasterize(g, viewmats, Ks, W, H, prev_means=g.means).flow.abs().max() < 1e-5


def test_batched_environments_are_independent():
    g = _random_gaussians(B=2, seed=4)
    viewmats, Ks = _cameras(2, 1)
    both = rasterize(g, viewmats, Ks, W, H)
    for b in range(2):
        gb = Gaussians(g.means[b:b + 1], g.quats[b:b + 1], g.scales, g.opacities, g.colors, g.instance_id)
        one = rasterize(gb, viewmats[b:b + 1], Ks[b:b + 1], W, H)
        torch.testing.assert_close(one.rgb[0], both.rgb[b])


def test_nothing_visible_gives_background():
    g = _random_gaussians(B=1)
    behind = Gaussians(g.means - torch.tensor([0.0, 0.0, 50.0]), g.quats, g.scales, g.opacities, g.colors,
                       g.instance_id)
    out = rasterize(behind, torch.eye(4).view(1, 1, 4, 4), intrinsics(50.0, W, H).view(1, 1, 3, 3), W, H,
                    background=(0.2, 0.4, 0.6))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0 and out.instance_id.abs().max() == 0
    torch.testing.assert_close(out.rgb[0, 0, 3, 4], torch.tensor([0.2, 0.4, 0.6]))


def test_timings_are_reported():
    g = _random_gaussians(B=1)
    viewmats, Ks = _cameras(1, 1)
    t = {}
    rasterize(g, viewmats, Ks, W, H, timings=t)
    assert {"project", "bin", "composite", "finish", "total"} <= set(t) and t["total"] > 0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(backend="vulkan"), "backend"),
        (dict(backend="gsplat"), "CUDA"),
        (dict(instance_mode="max"), "instance_mode"),
        (dict(viewmats=torch.eye(4).view(1, 4, 4)), "viewmats"),
        (dict(Ks=torch.eye(3).expand(2, 3, 3, 3)), "Ks"),
        (dict(width=0), "width"),
        (dict(prev_means=torch.zeros(2, 5, 3)), "prev_means"),
        (dict(near=0.0), "near"),
        (dict(eps2d=-0.1), "eps2d"),
    ],
)
def test_bad_inputs_raise_render_error(change, match):
    g = _random_gaussians()
    viewmats, Ks = _cameras(2, 1)
    kw = dict(viewmats=viewmats, Ks=Ks, width=W, height=H)
    kw.update(change)
    with pytest.raises(RenderError, match=match):
        rasterize(g, **kw)


def test_bad_gaussians_raise_render_error():
    with pytest.raises(RenderError, match="quats"):
        Gaussians(torch.zeros(1, 4, 3), torch.zeros(1, 3, 4), torch.ones(4, 3), torch.ones(4), torch.ones(4, 3),
                  torch.zeros(4, dtype=torch.int32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat.rasterization")
def test_gsplat_cuda_matches_cpu_path():
    g = _random_gaussians(B=2, N=200, seed=11, sh_degree=1)
    viewmats, Ks = _cameras(2, 2, 64, 48)
    prev = g.means + 0.03
    cpu = rasterize(g, viewmats, Ks, 64, 48, prev_means=prev, backend="torch")
    dev = Gaussians(*(t.cuda() for t in (g.means, g.quats, g.scales, g.opacities, g.colors, g.instance_id)),
                    sh=g.sh.cuda())
    gpu = rasterize(dev, viewmats.cuda(), Ks.cuda(), 64, 48, prev_means=prev.cuda(), backend="gsplat")
    # gsplat uses fast-math __expf; 1e-3 covers its rounding, labels may flip on exact ties only.
    for name in ("rgb", "depth", "alpha", "flow"):
        a, b = getattr(cpu, name), getattr(gpu, name).cpu()
        assert (a - b).abs().max() < 1e-3 * max(1.0, a.abs().max().item()), name
    assert (cpu.instance_id != gpu.instance_id.cpu()).float().mean() < 1e-3


def _dense_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01,
                         far_plane=1e10, eps2d=0.3, render_mode="RGB", **_):
    """A CPU stand-in for gsplat.rasterization (dense [pixels, Gaussians] blending, tiny images)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, m2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d=eps2d,
                                                            near_plane=near_plane, far_plane=far_plane)
    feats = torch.cat((colors, depths[..., None]), dim=-1)  # render_mode "RGB+ED": depth appended last
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    out = torch.zeros(*viewmats.shape[:2], height, width, feats.shape[-1])
    alpha_out = torch.zeros(*viewmats.shape[:2], height, width, 1)
    for b in range(viewmats.shape[0]):
        for c in range(viewmats.shape[1]):
            ids = ((radii[b, c] > 0).all(-1)).nonzero().squeeze(1)
            ids = ids[torch.sort(depths[b, c, ids], stable=True).indices]
            dx, dy = xs[..., None] - m2d[b, c, ids, 0], ys[..., None] - m2d[b, c, ids, 1]  # [H, W, n]
            a, bq, cq = conics[b, c, ids].unbind(-1)
            sigma = 0.5 * (a * dx * dx + cq * dy * dy) + bq * dx * dy
            alpha = (opacities[b, ids] * torch.exp(-sigma)).clamp(max=0.999)
            alpha = torch.where((alpha < 1 / 255) | (sigma < 0), 0.0, alpha)
            next_t = torch.cumprod(1 - alpha, dim=-1)
            before = torch.cat((torch.ones_like(next_t[..., :1]), next_t[..., :-1]), dim=-1)
            w = torch.where(next_t > 1e-4, alpha * before, 0.0)
            out[b, c] = w @ feats[b, c, ids]
            alpha_out[b, c, ..., 0] = w.sum(-1)
    out[..., -1:] = out[..., -1:] / alpha_out.clamp(min=1e-10)  # "ED": expected depth
    return out, alpha_out, {}


def test_gsplat_path_plumbing_with_a_cpu_stand_in(monkeypatch):
    # The CUDA path cannot run here; swap gsplat.rasterization for a dense CPU stand-in to check
    # how render.raster_gsplat packs colour / flow / label channels and unpacks "RGB+ED".
    import gsplat

    from render.raster_gsplat import gsplat_sums
    from render.rasterize import _args, _finish, _prepare, _resolve

    monkeypatch.setattr(gsplat, "rasterization", _dense_rasterization)
    g = _random_gaussians(B=2, N=30, seed=5, sh_degree=1)
    viewmats, Ks = _cameras(2, 2)
    prev = g.means + 0.04
    inputs = _prepare(g, viewmats, Ks, W, H, prev, None, (0.1, 0.2, 0.3), "gsplat", "instance", 0.01, 100.0)
    out = _finish(*_resolve(gsplat_sums(**_args(inputs), near=0.01, far=100.0), None, inputs), inputs, 0.01)
    ref = rasterize_reference(g, viewmats, Ks, W, H, prev_means=prev, background=(0.1, 0.2, 0.3))
    _assert_gbuffers_close(ref, out)

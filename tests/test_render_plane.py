"""Analytic infinite planes behind the splats: exact per-pixel ray-plane depth, one-sided, composited
under the splat layer."""

import math

import numpy as np
import torch

from render import GBuffer, Plane, composite_planes
from render.plane import plane_hits


def _camera(pos, lookat, W=64, H=48, fov=45.0):
    from physics.camera import intrinsics, look_at

    view = torch.tensor(look_at(pos, lookat, (0, 0, 1)), dtype=torch.float32)[None, None]
    K = torch.tensor(intrinsics(fov, W, H), dtype=torch.float32)[None, None]
    return view, K


GROUND = Plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.2, 0.4, 0.6), 3)


def test_depth_is_the_exact_ray_plane_distance_along_z():
    view, K = _camera((0.0, -2.0, 2.0), (0.0, 0.0, 0.0))
    depth, color, inst = plane_hits([GROUND], view, K, 64, 48)
    # reference per pixel in float64: camera centre c, ray direction R^T K^-1 [u, v, 1]
    V, Kn = view[0, 0].double().numpy(), K[0, 0].double().numpy()
    R, t = V[:3, :3], V[:3, 3]
    c = -R.T @ t
    for v, u in ((0, 0), (24, 32), (47, 63), (10, 50)):
        d = R.T @ np.linalg.solve(Kn, [u + 0.5, v + 0.5, 1.0])
        s = -c[2] / d[2]
        assert math.isclose(float(depth[0, 0, v, u]), s, rel_tol=1e-5)
    assert (inst == 3).all() and torch.allclose(color[0, 0, 5, 5], torch.tensor([0.2, 0.4, 0.6]))


def test_horizon_and_one_sidedness():
    view, K = _camera((0.0, -5.0, 0.5), (0.0, 0.0, 0.5))  # looking level: upper half is sky
    depth, _, inst = plane_hits([GROUND], view, K, 64, 48)
    assert torch.isinf(depth[0, 0, :23]).all() and torch.isfinite(depth[0, 0, 25:]).all()
    assert (inst[0, 0, :23] == 0).all()
    below, K = _camera((0.0, -2.0, -1.0), (0.0, 0.0, -1.5))  # under the ground: it faces away
    depth, _, _ = plane_hits([GROUND], below, K, 64, 48)
    assert torch.isinf(depth).all()


def test_nearest_plane_wins():
    view, K = _camera((0.0, -2.0, 2.0), (0.0, 0.0, 0.0))
    raised = Plane((0.0, 0.0, 0.5), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), 7)
    depth, _, inst = plane_hits([GROUND, raised], view, K, 64, 48)
    assert (inst == 7).all()
    d_ground, _, _ = plane_hits([GROUND], view, K, 64, 48)
    assert (depth < d_ground).all()


def test_composite_puts_planes_behind_splats():
    view, K = _camera((0.0, -2.0, 2.0), (0.0, 0.0, 0.0))
    B, C, H, W = 1, 1, 48, 64
    alpha = torch.zeros(B, C, H, W)
    alpha[..., :, :32] = 1.0  # left half covered by an opaque splat surface at depth 1 m
    alpha[..., 0, 40] = 0.25
    g = GBuffer(rgb=torch.ones(B, C, H, W, 3) * alpha[..., None], depth=alpha.clone(), alpha=alpha,
                instance_id=(alpha > 0.5).int(), flow=torch.zeros(B, C, H, W, 2))
    out = composite_planes(g, [GROUND], view, K)
    plane_depth, _, _ = plane_hits([GROUND], view, K, W, H)
    assert torch.equal(out.rgb[..., :32, :], g.rgb[..., :32, :]) and torch.equal(out.depth[..., :32], g.depth[..., :32])
    assert torch.allclose(out.rgb[0, 0, 10, 50], torch.tensor([0.2, 0.4, 0.6]))
    assert torch.allclose(out.depth[0, 0, 10, 50], plane_depth[0, 0, 10, 50])
    assert (out.alpha == 1).all() and (out.instance_id[..., 32:] == 3).all() and (out.instance_id[..., :32] == 1).all()
    # a translucent splat pixel blends: 0.25 of the splat over 0.75 of the plane
    assert torch.allclose(out.rgb[0, 0, 0, 40], 0.25 + 0.75 * torch.tensor([0.2, 0.4, 0.6]))
    expect = (0.25 * 0.25 + 0.75 * plane_depth[0, 0, 0, 40]) / 1.0
    assert torch.allclose(out.depth[0, 0, 0, 40], expect)


def test_far_clip_ends_the_plane_where_the_reference_camera_does():
    view, K = _camera((0.0, -5.0, 0.5), (0.0, 0.0, 0.5))  # looking level: the ground runs to the horizon
    depth, _, inst = plane_hits([GROUND], view, K, 64, 48)
    clipped, _, inst_c = plane_hits([GROUND], view, K, 64, 48, far=20.0)
    far_rows = torch.isfinite(depth) & (depth > 20.0)
    assert far_rows.any() and torch.isinf(clipped[far_rows]).all() and (inst_c[far_rows] == 0).all()
    near = depth <= 20.0
    assert torch.equal(clipped[near], depth[near]) and torch.equal(inst_c[near], inst[near])

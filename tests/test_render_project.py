"""The packed EWA projection against gsplat's own pure-torch reference implementation."""

import math

import pytest
import torch

from render import intrinsics, look_at
from render.project import ALPHA_MIN, camera_centers, project_packed, project_points


def _setup(B=2, C=3, N=300, W=40, H=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(B, N, 3, generator=gen)  # many off-screen and behind the cameras
    quats = torch.randn(B, N, 4, generator=gen)
    scales = 0.01 + 0.3 * torch.rand(B, N, 3, generator=gen)
    opac = 0.001 + 0.998 * torch.rand(B, N, generator=gen)
    views = torch.stack([look_at((4 * math.cos(a), 4 * math.sin(a), 1.0), (0, 0, 0)) for a in range(B * C)])
    Ks = intrinsics(60.0, W, H).expand(B, C, 3, 3).clone()
    return means, quats, scales, opac, views.view(B, C, 4, 4), Ks


@pytest.mark.parametrize("eps2d", [0.0, 0.3])  # ours (no blur) and gsplat's default blur
def test_packed_projection_matches_gsplat_torch_reference(eps2d):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    W, H = 40, 30
    means, quats, scales, opac, views, Ks = _setup(W=W, H=H)
    B, N = means.shape[:2]
    C = views.shape[1]
    proj = project_packed(means, quats, scales, opac, torch.rand(B, N, 3), None, views, Ks, W, H,
                          near=0.01, far=100.0, eps2d=eps2d)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, m2d, depths, conics, _ = _fully_fused_projection(means, covars, views, Ks, W, H, eps2d=eps2d,
                                                            near_plane=0.01, far_plane=100.0)
    b, c, n = proj.image_ids // C, proj.image_ids % C, proj.gauss_ids
    assert proj.image_ids.numel() > 100
    assert (radii[b, c, n] > 0).all()  # every packed entry is valid for gsplat too
    torch.testing.assert_close(proj.means2d, m2d[b, c, n], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(proj.depths, depths[b, c, n])
    torch.testing.assert_close(proj.conics, conics[b, c, n], rtol=1e-4, atol=1e-6)
    # The opacity-aware box is never larger than gsplat's fixed 3.33-sigma one.
    assert (proj.radii <= radii[b, c, n].float()).all()

    # Whatever gsplat keeps and we cull must be invisible: alpha < 1/255 at every pixel centre.
    kept = torch.zeros(B, C, N, dtype=torch.bool)
    kept[b, c, n] = True
    dropped = ((radii > 0).all(-1) & ~kept).nonzero()
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for bb, cc, nn in dropped.tolist():
        dx, dy = xs - m2d[bb, cc, nn, 0], ys - m2d[bb, cc, nn, 1]
        a, bq, cq = conics[bb, cc, nn]
        sigma = 0.5 * (a * dx * dx + cq * dy * dy) + bq * dx * dy
        assert (opac[bb, nn] * torch.exp(-sigma)).max() < ALPHA_MIN


def test_flow_feature_is_the_pixel_motion():
    W, H = 40, 30
    means, quats, scales, opac, views, Ks = _setup(B=1, C=1, N=50, seed=2)
    prev = means - torch.tensor([0.05, 0.0, 0.02])
    proj = project_packed(means, quats, scales, opac, torch.rand(1, 50, 3), None, views, Ks, W, H,
                          near=0.01, far=100.0, prev_means=prev)
    want = project_points(means, views, Ks, 0.01) - project_points(prev, views, Ks, 0.01)  # [1, 1, N, 2]
    torch.testing.assert_close(proj.features[:, 4:6], want[0, 0, proj.gauss_ids], rtol=1e-4, atol=1e-4)


def test_camera_centers_invert_viewmats():
    eye = (1.0, -2.0, 0.5)
    view = look_at(eye, (0.0, 0.0, 0.0))
    torch.testing.assert_close(camera_centers(view.view(1, 1, 4, 4))[0, 0], torch.tensor(eye), atol=1e-6, rtol=0)

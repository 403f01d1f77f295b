"""EWA projection of 3D Gaussians (gsplat's pinhole model), packed per visible (image, Gaussian).

Mirrors gsplat's CUDA `fully_fused_projection` (packed mode): the same Jacobian clamp (+0.3 of the
half field of view), the same optional screen-space blur (eps2d px^2 added to the 2D covariance;
gsplat's default is 0.3, ours 0: see EPS2D), conic = inverse of the blurred 2D covariance,
and the opacity-aware bounding radius min(3.33, sqrt(2 ln(255 opacity))) sigma. Outside that box
alpha < 1/255, so culling and tiling by it never change a pixel. tests/test_render_project.py
checks it against gsplat's own pure-torch `_fully_fused_projection`.

Per-entry features are composited by every backend in one layout:
  [0:3] rgb, [3] camera z, [4:6] flow (px), [6] one (-> alpha), [7:7+U] instance one-hot (optional),
  [7+U:] extra per-Gaussian channels (optional, e.g. normals for the lit render).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from render.quat import quat_to_rotmat

ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD: fainter contributions are skipped
MAX_ALPHA = 0.999  # gsplat clamps alpha so transmittance never reaches exactly 0
T_STOP = 1e-4  # a pixel stops (exclusively) once transmittance would fall to this
EXTEND = 3.33  # gsplat's cap on the bounding box, in standard deviations
RGB, DEPTH, FLOW, ONE, INST = slice(0, 3), 3, slice(4, 6), 6, 7
# Default screen-space blur (px^2). gsplat adds 0.3 to every projected covariance as a low-pass
# filter; on an opaque surface (optical depth ~5.6 per layer) that moves the alpha = 0.5 contour
# ~0.5 px further out at any resolution (a 9 px ball went from 1.17x to 1.52x its true area).
# Surface splats from meshes are smooth without it (tangent scale 0.75 x spacing), so the default
# is no blur; pass 0.3 to render 3DGS captures that were trained with gsplat's default.
# render/NOTES.md has the measurements.
EPS2D = 0.0


@dataclass
class Projected:
    """Visible (image, Gaussian) pairs, M of them; image = b * C + c."""

    image_ids: Tensor  # [M] int64
    gauss_ids: Tensor  # [M] int64
    means2d: Tensor  # [M, 2] pixels
    conics: Tensor  # [M, 3] (a, b, c) of the inverse blurred 2D covariance
    depths: Tensor  # [M] camera z, metres
    radii: Tensor  # [M, 2] bounding half-extents, whole pixels (float)
    opacities: Tensor  # [M]
    features: Tensor  # [M, D] composited channels, layout above


def camera_centers(viewmats: Tensor) -> Tensor:  # [B, C, 4, 4] -> [B, C, 3]
    """World position of each camera: -R^T t."""
    rot, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    return -torch.einsum("...ji,...j->...i", rot, t)


def project_points(points: Tensor, viewmats: Tensor, Ks: Tensor, near: float) -> Tensor:
    """Pinhole pixel coordinates of world points: [B, N, 3] -> [B, C, N, 2] (z clamped at `near`)."""
    pc = torch.einsum("bcij,bnj->bcni", viewmats[..., :3, :3], points) + viewmats[:, :, None, :3, 3]
    z = pc[..., 2:].clamp_min(near)
    return torch.einsum("bcij,bcnj->bcni", Ks[..., :2, :2], pc[..., :2] / z) + Ks[:, :, None, :2, 2]


def sh_colors(sh: Tensor, dirs: Tensor) -> Tensor:  # [..., S, 3], [..., 3] -> [..., 3]
    """View-dependent colour as gsplat evaluates it: SH(dirs) + 0.5, clamped at 0."""
    from gsplat.cuda._torch_impl import _spherical_harmonics  # lazy: pure torch, no CUDA build

    degree = int(round(math.sqrt(sh.shape[-2]))) - 1
    return (_spherical_harmonics(degree, dirs, sh) + 0.5).clamp_min(0.0)


def instance_ranks(instance_id: Tensor) -> tuple[Tensor, Tensor]:  # [N] -> ([U] ids, [N] ranks)
    """Compact instance labels 0..U-1 so one-hot features stay as narrow as the scene's label set."""
    ids, ranks = torch.unique(instance_id.long(), sorted=True, return_inverse=True)
    return ids, ranks


def build_features(rgb: Tensor, depth: Tensor, flow: Tensor, ranks: Tensor | None, num_labels: int,
                   extra: Tensor | None = None) -> Tensor:
    """Per-Gaussian channels in the shared layout: [..., 3], [...], [..., 2], [...] ranks, [..., E]
    extra -> [..., D]."""
    u = num_labels if ranks is not None else 0
    d = INST + u + (0 if extra is None else extra.shape[-1])
    out = rgb.new_zeros(*depth.shape, d)
    if extra is not None:
        out[..., INST + u:] = extra
    out[..., RGB] = rgb
    out[..., DEPTH] = depth
    out[..., FLOW] = flow
    out[..., ONE] = 1.0
    if ranks is not None:  # one-hot label weights, written in place rather than built and copied
        out.scatter_(-1, (INST + ranks).expand(depth.shape)[..., None], 1.0)
    return out


def _cull(mc: Tensor, smax: Tensor, opac: Tensor, Ks: Tensor, W: int, H: int, near: float, far: float,
          eps2d: float) -> Tensor:
    """Conservative visibility [B, C, N]: drops only Gaussians gsplat would mark invalid.

    The projected std along x is at most smax * fx / z * sqrt(1 + lim_x^2) + sqrt(eps2d), because
    the Jacobian row has that norm once tx/z is clamped to the field-of-view limit lim_x.
    """
    z = mc[..., 2]
    zc = z.clamp_min(near)
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # [B, C, 1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    lim_x = torch.maximum((W - cx) / fx, cx / fx) + 0.3 * 0.5 * W / fx
    lim_y = torch.maximum((H - cy) / fy, cy / fy) + 0.3 * 0.5 * H / fy
    u = fx * mc[..., 0] / zc + cx
    v = fy * mc[..., 1] / zc + cy
    rx = EXTEND * (fx / zc * torch.sqrt(1 + lim_x**2) * smax[:, None] + math.sqrt(eps2d)) + 1
    ry = EXTEND * (fy / zc * torch.sqrt(1 + lim_y**2) * smax[:, None] + math.sqrt(eps2d)) + 1
    keep = (z >= near) & (z <= far) & (opac[:, None] >= ALPHA_MIN)
    return keep & (u + rx > 0) & (u - rx < W) & (v + ry > 0) & (v - ry < H)


def _ewa(mc: Tensor, rot_cam: Tensor, quats: Tensor, scales: Tensor, K: Tensor, W: int, H: int, eps2d: float):
    """Per entry: means2d [M, 2] and blurred 2D covariance (c00, c01, c11), gsplat's persp_proj."""
    x, y, z = mc.unbind(-1)
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    lim_xp = (W - cx) / fx + 0.3 * 0.5 * W / fx
    lim_xn = cx / fx + 0.3 * 0.5 * W / fx
    lim_yp = (H - cy) / fy + 0.3 * 0.5 * H / fy
    lim_yn = cy / fy + 0.3 * 0.5 * H / fy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = z * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    # J @ R_cam, row by row: J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    j0 = (fx * rz)[:, None] * rot_cam[:, 0] - (fx * tx * rz * rz)[:, None] * rot_cam[:, 2]  # [M, 3]
    j1 = (fy * rz)[:, None] * rot_cam[:, 1] - (fy * ty * rz * rz)[:, None] * rot_cam[:, 2]
    m = quat_to_rotmat(quats) * scales[:, None, :]  # [M, 3, 3] = R_g S, so Sigma = m m^T
    t0, t1 = torch.bmm(torch.stack((j0, j1), dim=1), m).unbind(1)  # [M, 3] rows of J R_cam R_g S
    c00 = (t0 * t0).sum(-1) + eps2d
    c01 = (t0 * t1).sum(-1)
    c11 = (t1 * t1).sum(-1) + eps2d
    means2d = torch.stack((fx * x * rz + cx, fy * y * rz + cy), dim=-1)
    return means2d, c00, c01, c11


def project_packed(
    means: Tensor,  # [B, N, 3] world
    quats: Tensor,  # [B, N, 4]
    scales: Tensor,  # [B, N, 3]
    opacities: Tensor,  # [B, N]
    colors: Tensor,  # [B, N, 3]
    sh: Tensor | None,  # [B, N, S, 3]
    viewmats: Tensor,  # [B, C, 4, 4]
    Ks: Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    *,
    near: float,
    far: float,
    eps2d: float = EPS2D,
    prev_means: Tensor | None = None,  # [B, N, 3]
    prev_viewmats: Tensor | None = None,  # [B, C, 4, 4]
    ranks: Tensor | None = None,  # [N] int64 compact instance labels -> one-hot feature channels
    num_labels: int = 0,
    extra: Tensor | None = None,  # [B, N, E] extra channels composited like colour
) -> Projected:
    """Cull, project and build features for every visible (image, Gaussian) pair."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    rot, trans = viewmats[..., :3, :3], viewmats[..., :3, 3]
    mc = torch.matmul(means[:, None], rot.transpose(-1, -2)) + trans[:, :, None]  # [B, C, N, 3]
    keep = _cull(mc, scales.amax(-1), opacities, Ks, width, height, near, far, eps2d)
    img, n = keep.view(B * C, N).nonzero(as_tuple=True)  # [M0]: image b * C + c, Gaussian n
    bn = img // C * N + n  # row of (b, n) in [B * N] tables
    mcp = mc.view(B * C * N, 3).index_select(0, img * N + n)
    rot_i, K_i = rot.reshape(B * C, 3, 3).index_select(0, img), Ks.reshape(B * C, 3, 3).index_select(0, img)
    means2d, c00, c01, c11 = _ewa(mcp, rot_i, quats.reshape(B * N, 4).index_select(0, bn),
                                  scales.reshape(B * N, 3).index_select(0, bn), K_i, width, height, eps2d)
    det = c00 * c11 - c01 * c01
    opac = opacities.reshape(B * N).index_select(0, bn)
    extend = torch.sqrt(2.0 * torch.log(opac / ALPHA_MIN)).clamp(max=EXTEND)
    rx = torch.ceil(extend * torch.sqrt(c00))
    ry = torch.ceil(extend * torch.sqrt(c11))
    mx, my = means2d.unbind(-1)
    ok = (det > 0) & ((rx > 0) | (ry > 0))
    ok &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    sel = ok.nonzero().squeeze(1)
    img, n, bn, det = img[sel], n[sel], bn[sel], det[sel]
    conics = torch.stack((c11[sel] / det, -c01[sel] / det, c00[sel] / det), dim=-1)
    means2d, depth = means2d[sel], mcp[sel, 2]

    feats = _entry_features(means, colors, sh, viewmats, Ks, img, bn, n, means2d, depth, near, prev_means,
                            prev_viewmats, ranks, num_labels, extra)
    return Projected(image_ids=img, gauss_ids=n, means2d=means2d, conics=conics, depths=depth,
                     radii=torch.stack((rx[sel], ry[sel]), dim=-1), opacities=opac[sel], features=feats)


def _entry_features(means, colors, sh, viewmats, Ks, img, bn, n, means2d, depth, near, prev_means,
                    prev_viewmats, ranks, num_labels, extra=None) -> Tensor:
    """[M, D] features of the visible entries: colour (SH evaluated per camera), depth, flow, labels."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    if sh is None:
        rgb = colors.reshape(B * N, 3).index_select(0, bn)
    else:
        centers = camera_centers(viewmats).reshape(B * C, 3).index_select(0, img)
        rgb = sh_colors(sh.reshape(B * N, *sh.shape[2:]).index_select(0, bn),
                        means.reshape(B * N, 3).index_select(0, bn) - centers)
    if prev_means is None:
        flow = torch.zeros_like(means2d)
    else:  # this frame's pixel minus where the same Gaussian was in the previous frame's image
        K_i = Ks.reshape(B * C, 3, 3).index_select(0, img)
        pv = (viewmats if prev_viewmats is None else prev_viewmats).reshape(B * C, 4, 4).index_select(0, img)
        pc = torch.bmm(pv[:, :3, :3], prev_means.reshape(B * N, 3).index_select(0, bn)[:, :, None])[..., 0]
        pc = pc + pv[:, :3, 3]
        prev2d = torch.bmm(K_i[:, :2, :2], (pc[:, :2] / pc[:, 2:].clamp_min(near))[:, :, None])[..., 0]
        flow = means2d - (prev2d + K_i[:, :2, 2])
    ex = None if extra is None else extra.reshape(B * N, extra.shape[-1]).index_select(0, bn)
    return build_features(rgb, depth, flow, None if ranks is None else ranks.index_select(0, n), num_labels, ex)

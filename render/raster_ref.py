"""Reference rasteriser: gsplat's pure-torch projection, then a plain loop per pixel over the
depth-sorted Gaussians with gsplat's blending rules. Slow (tiny images only); it is the truth the
fast CPU path is tested against, and shares none of its culling, binning or compositing code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from render.project import ALPHA_MIN, MAX_ALPHA, T_STOP, build_features, camera_centers, project_points, sh_colors


def reference_sums(
    means: Tensor,  # [B, N, 3]
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
    prev_means: Tensor | None,  # [B, N, 3]
    prev_viewmats: Tensor | None,  # [B, C, 4, 4]
    ranks: Tensor | None,  # [N] int64 compact labels (one-hot weight channels), or None
    num_labels: int,
    best_instance: Tensor | None,  # [N] int32
    eps2d: float,
    extra: Tensor | None = None,  # [B, N, E]
) -> tuple[Tensor, Tensor | None]:
    """([B*C, H, W, D] weighted feature sums, [B*C, H, W] max-weight labels or None)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    B, N = means.shape[:2]
    C = viewmats.shape[1]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)  # [B, N, 3, 3]
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near, far_plane=far)
    pix2d = project_points(means, viewmats, Ks, near)  # [B, C, N, 2]
    if prev_means is None:
        flow = torch.zeros_like(pix2d)
    else:
        pv = viewmats if prev_viewmats is None else prev_viewmats
        flow = pix2d - project_points(prev_means, pv, Ks, near)
    if sh is None:
        rgb = colors[:, None].expand(B, C, N, 3)
    else:
        dirs = means[:, None] - camera_centers(viewmats)[:, :, None]  # [B, C, N, 3]
        rgb = sh_colors(sh[:, None].expand(B, C, *sh.shape[1:]), dirs)
    rk = None if ranks is None else ranks.expand(B, C, N)
    ex = None if extra is None else extra[:, None].expand(B, C, N, extra.shape[-1])
    feats = build_features(rgb, depths, flow, rk, num_labels, ex)  # [B, C, N, D]
    sums = torch.zeros(B * C, height, width, feats.shape[-1])
    labels = None if best_instance is None else torch.zeros(B * C, height, width, dtype=torch.int32)
    for b in range(B):
        for c in range(C):
            valid = (radii[b, c] > 0).all(-1) & (opacities[b] >= ALPHA_MIN)
            ids = valid.nonzero().squeeze(1)
            ids = ids[torch.sort(depths[b, c, ids], stable=True).indices]  # front to back, ties by index
            _image(sums[b * C + c], None if labels is None else labels[b * C + c], means2d[b, c, ids],
                   conics[b, c, ids], opacities[b, ids], feats[b, c, ids],
                   None if best_instance is None else best_instance[ids])
    return sums, labels


def _image(out: Tensor, labels: Tensor | None, m2d: Tensor, conic: Tensor, opac: Tensor, feats: Tensor,
           inst: Tensor | None) -> None:
    """Blend one image pixel by pixel, exactly in gsplat's order and with its thresholds."""
    height, width = out.shape[:2]
    feats_l = feats.tolist()
    inst_l = None if inst is None else inst.tolist()
    for y in range(height):
        for x in range(width):
            dx = m2d[:, 0] - (x + 0.5)
            dy = m2d[:, 1] - (y + 0.5)
            sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
            alphas = torch.clamp(opac * torch.exp(-sigma), max=MAX_ALPHA).tolist()
            sig = sigma.tolist()
            acc = [0.0] * feats.shape[1]
            t, best_w, best_lab = 1.0, 0.0, 0
            for i, a in enumerate(alphas):
                if sig[i] < 0 or a < ALPHA_MIN:
                    continue
                next_t = t * (1.0 - a)
                if next_t <= T_STOP:  # exclusive: this Gaussian is not blended
                    break
                w = a * t
                for k, f in enumerate(feats_l[i]):
                    acc[k] += w * f
                if inst_l is not None and w > best_w:
                    best_w, best_lab = w, inst_l[i]
                t = next_t
            out[y, x] = torch.tensor(acc)
            if labels is not None:
                labels[y, x] = best_lab


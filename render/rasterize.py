"""rasterize(): Gaussians -> GBuffer on gsplat (CUDA) or the vectorised CPU path; one signature.

All paths produce weighted sums of the same per-Gaussian channels (render.project's layout) and
share the finishing step here, so they differ only in how the weights are computed.

Instance labels (`instance_mode`):
  "instance" (default): the label whose Gaussians carry the largest total blending weight at the
      pixel; the same on every backend (gsplat renders one weight channel per label).
  "gaussian": the label of the single Gaussian with the largest blending weight; CPU paths only,
      since gsplat's rasteriser cannot return a per-pixel argmax.
Both are 0 where alpha < 0.5.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor

from render.errors import RenderError
from render.project import DEPTH, EPS2D, FLOW, ONE, RGB, instance_ranks, project_packed
from render.types import GBuffer, Gaussians

BACKENDS = ("auto", "gsplat", "torch")
INSTANCE_MODES = ("instance", "gaussian")


def rasterize(
    gaussians: Gaussians,
    viewmats: Tensor,  # [B, C, 4, 4] world -> camera, OpenCV (x right, y down, z forward)
    Ks: Tensor,  # [B, C, 3, 3] pixels
    width: int,
    height: int,
    *,
    prev_means: Tensor | None = None,  # [B, N, 3] world means of the previous frame
    background: Sequence[float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
    prev_viewmats: Tensor | None = None,  # [B, C, 4, 4] previous frame's cameras (default: viewmats)
    instance_mode: str = "instance",
    alpha_min: float = 0.01,
    tile_size: int = 8,
    eps2d: float = EPS2D,
    timings: dict | None = None,
    extra: Tensor | None = None,  # [N, E] or [B, N, E] per-Gaussian channels -> GBuffer.extra
) -> GBuffer:
    """Render RGB, depth, alpha, instance labels and flow for B environments x C cameras.

    backend: "gsplat" (CUDA tensors), "torch" (any device; the CPU path) or "auto" (gsplat when
    the Gaussians are on a CUDA device). Depth and flow are alpha-normalised and 0 where
    alpha < alpha_min. eps2d: screen-space blur in px^2 added to every projected covariance;
    0 (default) keeps silhouettes where the surfaces are, 0.3 is gsplat's default (use it for 3DGS
    captures trained with it). timings, if a dict, receives ms for project / bin / composite /
    finish / total. extra: channels composited alongside the colour in the same pass and returned
    alpha-normalised as GBuffer.extra (e.g. normals for lighting; far cheaper than a second pass).
    """
    t0 = time.perf_counter()
    inputs = _prepare(gaussians, viewmats, Ks, width, height, prev_means, prev_viewmats, background,
                      backend, instance_mode, near, far, tile_size, eps2d, extra)
    if backend == "auto":  # gsplat cannot do per-Gaussian labels, so "gaussian" mode stays on torch
        backend = "gsplat" if inputs["means"].is_cuda and instance_mode == "instance" else "torch"
    if backend == "gsplat":
        if not inputs["means"].is_cuda:
            raise RenderError("backend='gsplat' needs CUDA tensors (gsplat.rasterization has no CPU kernels); "
                              "move Gaussians and cameras to a CUDA device, or use backend='torch'")
        if instance_mode == "gaussian":
            raise RenderError("instance_mode='gaussian' needs a per-pixel argmax that gsplat cannot return; "
                              "use instance_mode='instance' or backend='torch'")
        from render.raster_gsplat import gsplat_sums

        core, labels = _resolve(gsplat_sums(**_args(inputs), near=near, far=far), None, inputs)
        if timings is not None:
            torch.cuda.synchronize()
            _lap(timings, "composite", t0)  # projection, binning and blending all happen inside gsplat
    else:
        core, labels = _torch_sums(inputs, width, height, near, far, tile_size, timings)
    t1 = time.perf_counter()
    out = _finish(core, labels, inputs, alpha_min)
    if timings is not None:
        timings["finish"] = (time.perf_counter() - t1) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
    return out


def rasterize_reference(
    gaussians: Gaussians,
    viewmats: Tensor,  # [B, C, 4, 4]
    Ks: Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    *,
    prev_means: Tensor | None = None,  # [B, N, 3]
    background: Sequence[float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
    prev_viewmats: Tensor | None = None,  # [B, C, 4, 4]
    instance_mode: str = "instance",
    alpha_min: float = 0.01,
    tile_size: int = 8,
    eps2d: float = EPS2D,
    timings: dict | None = None,
    extra: Tensor | None = None,  # [N, E] or [B, N, E]
) -> GBuffer:
    """Same contract as rasterize(), computed by a per-pixel loop on CPU (tiny images only).

    `backend` and `tile_size` are accepted for signature parity and ignored (inputs are moved to
    the CPU; there are no tiles); timings, if a dict, receives the total ms.
    """
    from render.raster_ref import reference_sums

    t0 = time.perf_counter()
    inputs = _prepare(gaussians, viewmats, Ks, width, height, prev_means, prev_viewmats, background,
                      backend, instance_mode, near, far, tile_size, eps2d, extra)
    inputs = {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in inputs.items()}
    best = inputs["instance_id"] if instance_mode == "gaussian" else None
    sums, labels = reference_sums(**_args(inputs), near=near, far=far, best_instance=best)
    out = _finish(*_resolve(sums, labels, inputs), inputs, alpha_min)
    _lap(timings, "total", t0)
    return out


def _torch_sums(inputs: dict, width, height, near, far, tile_size, timings) -> tuple[Tensor, Tensor]:
    from render.raster_cpu import bin_tiles, channel_argmax, composite, untile

    t = time.perf_counter()
    proj = project_packed(**_args(inputs), near=near, far=far)
    t = _lap(timings, "project", t)
    num_images = inputs["viewmats"].shape[0] * inputs["viewmats"].shape[1]
    bins = bin_tiles(proj, num_images, width, height, tile_size)
    t = _lap(timings, "bin", t)
    best = None if inputs["ranks"] is not None else inputs["instance_id"][proj.gauss_ids]
    sums, labels = composite(proj, bins, num_images, width, height, tile_size, best_instance=best)  # [n, D, P]
    u = _label_channels(inputs)
    if labels is None:  # per-label weight channels, resolved in tile layout before reordering pixels
        labels = inputs["instance_ids"].to(sums.device)[channel_argmax(sums[:, ONE + 1:ONE + 1 + u])]
    keep = torch.cat((sums[:, : ONE + 1], sums[:, ONE + 1 + u:]), 1) if inputs["extra"] is not None \
        else sums[:, : ONE + 1]
    core = untile(keep.transpose(1, 2), num_images, bins, tile_size, width, height)
    labels = untile(labels.to(torch.int32), num_images, bins, tile_size, width, height)
    _lap(timings, "composite", t)
    if timings is not None:
        timings["visible"] = proj.image_ids.numel()
        timings["pairs"] = bins.entry.numel()
    return core, labels


def _lap(timings: dict | None, name: str, t: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[name] = (now - t) * 1e3
    return now


def _args(inputs: dict) -> dict:
    keys = ("means", "quats", "scales", "opacities", "colors", "sh", "viewmats", "Ks", "width", "height",
            "prev_means", "prev_viewmats", "ranks", "num_labels", "eps2d", "extra")
    return {k: inputs[k] for k in keys}


def _label_channels(inputs: dict) -> int:
    """Width of the one-hot label block in the feature layout (0 in "gaussian" instance mode)."""
    return inputs["num_labels"] if inputs["ranks"] is not None else 0


def _resolve(sums: Tensor, labels: Tensor | None, inputs: dict) -> tuple[Tensor, Tensor]:
    """[..., D] weighted sums -> ([..., 7 + E] rgb/depth/flow/alpha(/extra) sums, [...] int32 labels)."""
    u = _label_channels(inputs)
    if labels is None:  # one weight channel per label: the heaviest label wins (first on ties)
        ids = inputs["instance_ids"].to(sums.device)
        labels = ids[sums[..., ONE + 1:ONE + 1 + u].argmax(dim=-1)]
    core = sums[..., : ONE + 1]
    if inputs["extra"] is not None:
        core = torch.cat((core, sums[..., ONE + 1 + u:]), -1)
    return core, labels.to(torch.int32)


def _finish(core: Tensor, labels: Tensor, inputs: dict, alpha_min: float) -> GBuffer:
    """Sums [B*C, H, W, 7] and labels [B*C, H, W] -> GBuffer: background, normalisation, labels."""
    B, C = inputs["viewmats"].shape[:2]
    H, W = inputs["height"], inputs["width"]
    core = core.reshape(B, C, H, W, core.shape[-1])
    alpha = core[..., ONE].contiguous()
    bg = torch.as_tensor(inputs["background"], dtype=core.dtype, device=core.device)
    rgb = (core[..., RGB] + (1.0 - alpha)[..., None] * bg).clamp_(0.0, 1.0)
    inv = torch.where(alpha >= alpha_min, 1.0 / alpha.clamp_min(1e-10), 0.0)
    depth = core[..., DEPTH] * inv
    flow = core[..., FLOW] * inv[..., None]
    labels = labels.reshape(B, C, H, W)
    labels = torch.where(alpha >= 0.5, labels, torch.zeros_like(labels))
    extra = core[..., ONE + 1:] * inv[..., None] if inputs["extra"] is not None else None
    return GBuffer(rgb=rgb, depth=depth, alpha=alpha, instance_id=labels, flow=flow, extra=extra)


def _prepare(g, viewmats, Ks, width, height, prev_means, prev_viewmats, background, backend,
             instance_mode, near, far, tile_size: int = 8, eps2d: float = EPS2D, extra: Tensor | None = None) -> dict:
    """Validate everything once and expand per-Gaussian attributes to [B, N, ...]."""
    if not isinstance(g, Gaussians):
        raise RenderError(f"rasterize takes a Gaussians (from SplatScene.posed), got {type(g).__name__}")
    if backend not in BACKENDS:
        raise RenderError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if instance_mode not in INSTANCE_MODES:
        raise RenderError(f"unknown instance_mode {instance_mode!r}; use one of {INSTANCE_MODES}")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise RenderError(f"width and height must be positive ints, got {width!r} x {height!r}")
    if not 0 < near < far:
        raise RenderError(f"need 0 < near < far, got near={near}, far={far}")
    if not (isinstance(eps2d, (int, float)) and 0.0 <= float(eps2d) < float("inf")):
        raise RenderError(f"eps2d={eps2d!r} must be a finite float >= 0 (px^2 of screen-space blur; 0 = none, "
                          "gsplat's default is 0.3)")
    if not (isinstance(tile_size, int) and 1 <= tile_size <= 64):
        raise RenderError(f"tile_size={tile_size!r} must be an int in 1..64 (8 is fastest on CPU)")
    B, N = g.means.shape[:2]
    dev = g.means.device
    for name, t in (("viewmats", viewmats), ("Ks", Ks), ("prev_viewmats", prev_viewmats)):
        if t is None and name == "prev_viewmats":
            continue
        want = (4, 4) if name != "Ks" else (3, 3)
        if not isinstance(t, Tensor) or t.dim() != 4 or t.shape[0] != B or tuple(t.shape[2:]) != want:
            raise RenderError(f"{name} has shape {getattr(t, 'shape', type(t))}, expected [B={B}, C, {want[0]}, "
                              f"{want[1]}] (B must match the Gaussians' batch)")
    C = viewmats.shape[1]
    if Ks.shape[1] != C or (prev_viewmats is not None and prev_viewmats.shape[1] != C):
        raise RenderError(f"Ks / prev_viewmats must have the same camera count C={C} as viewmats")
    if prev_means is not None and (not isinstance(prev_means, Tensor) or prev_means.shape != g.means.shape):
        raise RenderError(f"prev_means has shape {getattr(prev_means, 'shape', None)}, expected "
                          f"{tuple(g.means.shape)} (the previous frame's Gaussians.means)")
    bg = tuple(float(x) for x in background)
    if len(bg) != 3:
        raise RenderError(f"background must be 3 floats (linear RGB), got {background!r}")
    if extra is not None:
        if not isinstance(extra, Tensor) or extra.dim() not in (2, 3) or extra.shape[-2] != N or \
                (extra.dim() == 3 and extra.shape[0] != B) or extra.shape[-1] < 1:
            raise RenderError(f"extra has shape {tuple(getattr(extra, 'shape', ()))}, expected [N={N}, E] or "
                              f"[B={B}, N={N}, E] (E >= 1 channels per Gaussian)")
        extra = extra.expand(B, N, extra.shape[-1])
    scales, opac, colors, sh = g.batched()
    ids, ranks = instance_ranks(g.instance_id.to(dev))

    def f32(t):
        return None if t is None else t.to(device=dev, dtype=torch.float32)

    return dict(means=f32(g.means), quats=f32(g.quats), scales=f32(scales), opacities=f32(opac),
                colors=f32(colors), sh=f32(sh), viewmats=f32(viewmats), Ks=f32(Ks), width=width,
                height=height, prev_means=f32(prev_means), prev_viewmats=f32(prev_viewmats),
                ranks=ranks if instance_mode == "instance" else None, num_labels=ids.numel(),
                instance_id=g.instance_id.to(dev).int(), instance_ids=ids, background=bg, eps2d=float(eps2d),
                extra=f32(extra))

"""Per-frame object labels computed from the splat scene with render/ directly (conventions in
docs/dataset.md "Labels"):

- surface normals in the camera frame (OpenCV: x right, y down, z forward), unit, facing the camera;
- forward flow (pixels a surface point moves from this frame to the next), from one extra splat pass
  that also draws the normals (backward flow is the main pass's flow, negated);
- per instance: visible pixels, pixels if rendered alone (only its Gaussians / its plane), the 2D box
  of its visible pixels, its 3D box (centre, size, wxyz in the world frame: the box of its geometry
  in its base link's frame, posed) and the image position of the 3D box centre.

Pixel coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1), its centre is
(j + 0.5, i + 0.5), and K maps camera points to these coordinates (as render/ rasterises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class InstanceShape:
    """Static geometry of one instance (a scenario entity) for its 3D box."""

    instance_id: int
    entity: str
    semantic_class: str | None
    slots: list[int]  # body slots of its links; slots[0] is the base link, whose frame orients the box
    points: list[Tensor]  # per slot [V, 3] metres, link frame (hull vertices are enough)
    plane: bool = False  # an infinite plane has no box


def instance_shapes(world, scenario) -> list[InstanceShape]:
    """InstanceShapes of every entity of a built physics.World (instance id = 1 + entity index)."""
    per_slot: dict[int, list[np.ndarray]] = {}
    for vis in world.link_visuals():
        per_slot.setdefault(vis.body, []).append(np.asarray(vis.vertices, dtype=np.float64))
    out = []
    for i, e in enumerate(scenario.entities):
        slots = list(world.entity_slots(e.name))
        pts = [torch.as_tensor(_hull(np.concatenate(per_slot[k])), dtype=torch.float32) for k in slots if k in per_slot]
        out.append(InstanceShape(i + 1, e.name, e.semantic_class, [k for k in slots if k in per_slot] or slots[:1],
                                 pts, plane=e.type == "plane"))
    return out


def _hull(v: np.ndarray) -> np.ndarray:  # [V, 3] -> hull vertices (same box, far fewer points)
    if len(v) < 64:
        return v
    try:
        import trimesh

        return np.asarray(trimesh.convex.convex_hull(v).vertices)
    except Exception:  # degenerate (flat) geometry: keep the points
        return v


def _rotmat(q: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


def boxes_3d(shapes: list[InstanceShape], body_pos: Tensor,  # [B, K, 3] metres, world frame
             body_quat: Tensor,  # [B, K, 4] wxyz
             ) -> tuple[Tensor, Tensor, Tensor]:
    """-> centre [B, I, 3] (world), size [B, I, 3] (full extents along the box axes), quat [B, I, 4] (wxyz,
    the base link's orientation); NaN for planes."""
    B, I = body_pos.shape[0], len(shapes)
    centre, size = torch.full((B, I, 3), math.nan), torch.full((B, I, 3), math.nan)
    quat = torch.full((B, I, 4), math.nan)
    pos, rot = body_pos.float(), _rotmat(body_quat.float())  # [B, K, 3], [B, K, 3, 3]
    for i, s in enumerate(shapes):
        if s.plane or not s.points:
            continue
        b0 = s.slots[0]
        local = []  # every point in the base link's frame
        for k, p in zip(s.slots, s.points):
            world = torch.einsum("bij,vj->bvi", rot[:, k], p) + pos[:, k, None]  # [B, V, 3]
            local.append(torch.einsum("bji,bvj->bvi", rot[:, b0], world - pos[:, b0, None]))
        local = torch.cat(local, 1)
        lo, hi = local.amin(1), local.amax(1)  # [B, 3]
        centre[:, i] = torch.einsum("bij,bj->bi", rot[:, b0], (lo + hi) / 2) + pos[:, b0]
        size[:, i], quat[:, i] = hi - lo, torch.nn.functional.normalize(body_quat[:, b0].float(), dim=-1)
    return centre, size, quat


def project(points: Tensor,  # [B, I, 3] world
            viewmat: Tensor,  # [B, 4, 4] world -> camera, OpenCV
            K: Tensor,  # [B, 3, 3]
            ) -> tuple[Tensor, Tensor]:
    """-> pixel position [B, I, 2] (continuous coordinates, NaN behind the camera), depth z [B, I] metres."""
    pc = torch.einsum("bij,bnj->bni", viewmat[:, :3, :3].float(), points.float()) + viewmat[:, None, :3, 3].float()
    z = pc[..., 2]
    uv = torch.einsum("bij,bnj->bni", K[:, :2, :2].float(), pc[..., :2] / z[..., None]) + K[:, None, :2, 2].float()
    return torch.where((z > 0)[..., None], uv, torch.full_like(uv, math.nan)), z


def boxes_2d(instance: Tensor,  # [..., H, W] int instance ids
             ids: list[int]) -> tuple[Tensor, Tensor]:
    """-> box [..., I, 4] (x_min, y_min, x_max, y_max: pixel edges, NaN where the instance has no pixel),
    pixel count [..., I]."""
    H, W = instance.shape[-2:]
    boxes = torch.full((*instance.shape[:-2], len(ids), 4), math.nan)
    count = torch.zeros((*instance.shape[:-2], len(ids)), dtype=torch.int64)
    cols, rows = torch.arange(W, dtype=torch.float32), torch.arange(H, dtype=torch.float32)
    for i, iid in enumerate(ids):
        m = instance == iid
        count[..., i] = m.sum((-1, -2))
        mx, my = m.any(-2), m.any(-1)  # [..., W], [..., H]
        inf = torch.tensor(math.inf)
        x0 = torch.where(mx, cols, inf).amin(-1)
        x1 = torch.where(mx, cols, -inf).amax(-1) + 1
        y0 = torch.where(my, rows, inf).amin(-1)
        y1 = torch.where(my, rows, -inf).amax(-1) + 1
        box = torch.stack([x0, y0, x1, y1], -1)
        boxes[..., i, :] = torch.where((count[..., i] > 0)[..., None], box, torch.full_like(box, math.nan))
    return boxes, count


def _subset(g, mask: Tensor):
    from render import Gaussians

    pick = lambda t: None if t is None else (t[:, mask] if t.dim() >= 2 and t.shape[:2] == g.means.shape[:2]  # noqa: E731
                                             else t[mask])
    return Gaussians(g.means[:, mask], g.quats[:, mask], pick(g.scales), pick(g.opacities), pick(g.colors),
                     g.instance_id[mask], pick(g.sh))


def alone_pixels(g, planes: list, ids: list[int],
                 viewmats: Tensor,  # [B, C, 4, 4]
                 Ks: Tensor,  # [B, C, 3, 3]
                 width: int, height: int, *, backend: str = "auto", plane_far: float = math.inf) -> Tensor:
    """Pixels each instance covers when rendered alone (alpha >= 0.5, as instance labels): [B, C, I]."""
    from render import rasterize
    from render.plane import plane_hits

    B, C = viewmats.shape[:2]
    out = torch.zeros((B, C, len(ids)), dtype=torch.int64)
    for i, iid in enumerate(ids):
        mask = torch.zeros((B, C, height, width), dtype=torch.bool)
        own = [p for p in planes if p.instance_id == iid]
        if own:
            mask |= torch.isfinite(plane_hits(own, viewmats.float(), Ks.float(), width, height, plane_far)[0])
        sel = g.instance_id == iid
        if sel.any():
            gb = rasterize(_subset(g, sel), viewmats.float(), Ks.float(), width, height, backend=backend)
            mask |= gb.instance_id == iid
        out[..., i] = mask.sum((-1, -2))
    return out


def normals_and_forward_flow(g, next_means: Tensor | None,  # [B, N, 3] the next frame's means, or None
                             planes: list,
                             viewmats: Tensor,  # [B, C, 4, 4]
                             Ks: Tensor,  # [B, C, 3, 3]
                             width: int, height: int, *, backend: str = "auto",
                             plane_far: float = math.inf) -> tuple[Tensor, Tensor]:
    """-> camera-frame unit normals [B, C, H, W, 3] (0 where nothing is drawn), forward flow [B, C, H, W, 2]
    (pixels, this frame to the next; 0 without next_means and on planes, which are static)."""
    from render import Gaussians, composite_planes, rasterize
    from render.lighting import splat_normals
    from render.project import camera_centers

    B, C = viewmats.shape[:2]
    views, Ks = viewmats.float(), Ks.float()
    eye = camera_centers(views)  # [B, C, 3]
    normals = torch.zeros((B, C, height, width, 3))
    flow = torch.zeros((B, C, height, width, 2))
    for c in range(C):  # normals face each camera
        n = splat_normals(g, eye[:, c])  # [B, N, 3] world
        ng = Gaussians(g.means, g.quats, g.scales, g.opacities, n * 0.5 + 0.5, g.instance_id)
        gb = rasterize(ng, views[:, c:c + 1], Ks[:, c:c + 1], width, height, prev_means=next_means, backend=backend)
        enc = [replace(p, color=tuple((torch.nn.functional.normalize(torch.tensor(p.normal, dtype=torch.float32), dim=0)
                                       * 0.5 + 0.5).tolist())) for p in planes]
        gb = composite_planes(gb, enc, views[:, c:c + 1], Ks[:, c:c + 1], far=plane_far)
        nw = torch.nn.functional.normalize(gb.rgb[:, 0] / gb.alpha[:, 0, ..., None].clamp(min=1e-6) * 2 - 1, dim=-1)
        nc = torch.einsum("bij,bhwj->bhwi", views[:, c, :3, :3], nw)  # world -> camera axes
        normals[:, c] = torch.where((gb.alpha[:, 0] > 1e-3)[..., None], nc, torch.zeros_like(nc))
        if next_means is not None:
            flow[:, c] = -gb.flow[:, 0]  # the pass's flow is (here - there); forward flow is (there - here)
    return normals, flow

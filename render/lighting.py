"""Lit splat render: the splat G-buffer shaded by the environment and the sun, with shadows.

    radiance = albedo / pi * (E_env(n) + sun_color * sun_strength * max(0, n . l) * V_sun)

where the albedo is the splat colour, n the per-pixel normal composited from per-Gaussian normals
(a surface splat is a flat disc: its normal is the axis of its smallest scale, turned towards the
camera), E_env the 9-coefficient SH irradiance of the environment map (render.environment), l the
direction towards the sun and V_sun its visibility, read from a shadow map that the same splat
rasteriser draws from the sun (a distant pinhole camera along the sun direction, so nearly
orthographic). Where no surface is, the pixel shows the environment along its ray, as the path
tracer's camera does. Not modelled (the refiner's job): occlusion of the environment light, soft
shadows, specular highlights, inter-reflection, refraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from render.environment import Environment, env_radiance, irradiance
from render.plane import Plane, composite_planes
from render.project import camera_centers
from render.quat import quat_to_rotmat
from render.rasterize import rasterize
from render.types import GBuffer, Gaussians

SHADOW_RES = 128  # shadow-map pixels per side (cost grows with it; 3x3 PCF softens the edges)
SHADOW_DISTANCE = 50.0  # light camera distance in scene radii (large: nearly orthographic)
SHADOW_BIAS_TEXELS = 1.5  # depth bias in shadow-map texels (times the surface's slope towards the light)
SHADOW_NORMAL_OFFSET = 2.0  # receivers are looked up this many texels off their surface, along the normal
SHADOW_STRIDE = 4  # the shadow map is drawn from every 4th Gaussian, each 2x wider (same coverage, 1/4 the cost)
# the sun in the mirror-environment cue (Lit.reflection): the sun's specular radiance off each pixel's
# surface, a GGX microfacet lobe (alpha = roughness^2, Smith-Schlick masking, Schlick Fresnel with F0 =
# 0.04 for dielectrics and the albedo for metals, as the path tracer's Principled BSDF), zero where the
# sun is shadowed, clamped at SUN_SPECULAR_MAX (display white). The environment map has no sun disc;
# without this term the refiner cannot tell where a glare falls, nor how bright and wide it is.
SUN_SPECULAR_MAX = 1.0
MIN_ALPHA = 0.02  # smallest GGX alpha (roughness ~0.14): sharper glints than a pixel are not drawn
DIELECTRIC_F0 = 0.04
DEFAULT_MATERIAL = (0.5, 0.0, 0.0)  # roughness, metallic, transmission when no table is given


@dataclass
class Lit:
    rgb: Tensor  # [B, C, H, W, 3] linear radiance (clamp and encode to sRGB for display)
    normals: Tensor  # [B, C, H, W, 3] world-frame unit normals (0 where nothing is drawn)
    sun_visibility: Tensor  # [B, C, H, W] in [0, 1] (1 = lit, 0 = in the shadow map's shadow)
    sun_cos: Tensor  # [B, C, H, W] max(0, n . l), l = towards the sun (0 where nothing is drawn)
    reflection: Tensor  # [B, C, H, W, 3] linear environment radiance along the mirrored view ray, plus the
    # sun's specular radiance (sun_specular): where a glare falls and how bright it is


def splat_normals(g: Gaussians, eye: Tensor) -> Tensor:  # eye [B, 3] -> [B, N, 3]
    """Per-Gaussian unit normals (axis of the smallest scale) turned towards the point `eye`."""
    scales = g.scales.expand(g.means.shape[0], *g.scales.shape[-2:]) if g.scales.dim() == 2 else g.scales
    axis = scales.argmin(-1)  # [B, N]
    rot = quat_to_rotmat(torch.nn.functional.normalize(g.quats, dim=-1))  # [B, N, 3, 3], columns = body axes
    n = torch.gather(rot, -1, axis[..., None, None].expand(*axis.shape, 3, 1))[..., 0]
    flip = ((eye[:, None] - g.means) * n).sum(-1, keepdim=True) < 0
    return torch.where(flip, -n, n)


def _light_camera(g: Gaussians, sun: Tensor, res: int, receivers: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A distant camera looking along the sun direction: ([B,1,4,4], [B,1,3,3]). Its square footprint
    is the casters' (the Gaussians') extent across the sun direction, clipped to the receivers' (the
    shaded points [B, M, 3], non-finite ones ignored): a caster outside the receivers' footprint cannot
    shadow them, so objects flung far away or a large textured floor do not stretch the map's texels
    (and with them the depth bias) over what the cameras see."""
    helper = torch.tensor([0.0, 0.0, 1.0]) if abs(float(sun[2])) < 0.99 else torch.tensor([1.0, 0.0, 0.0])
    right = torch.nn.functional.normalize(torch.linalg.cross(sun, helper), dim=0)
    rot = torch.stack((right, torch.linalg.cross(sun, right), sun), 0)  # rows = light axes (right, down, sun)
    m = g.means @ rot.T  # [B, N, 3] in light axes
    lo, hi = m.amin(1), m.amax(1)
    if receivers is not None:
        r = receivers @ rot.T
        ok = torch.isfinite(r).all(-1, keepdim=True)
        rlo = torch.where(ok, r, torch.full_like(r, math.inf)).amin(1)[:, :2]
        rhi = torch.where(ok, r, torch.full_like(r, -math.inf)).amax(1)[:, :2]
        clo, chi = torch.maximum(lo[:, :2], rlo), torch.minimum(hi[:, :2], rhi)
        overlap = (chi > clo).all(-1, keepdim=True)  # else nothing can shadow them: keep the casters' box
        lo = torch.cat((torch.where(overlap, clo, lo[:, :2]), lo[:, 2:]), 1)
        hi = torch.cat((torch.where(overlap, chi, hi[:, :2]), hi[:, 2:]), 1)
    half = ((hi[:, :2] - lo[:, :2]).amax(-1) / 2).clamp(min=0.05)  # [B] half side of the footprint, metres
    centre = (lo + hi) / 2
    dist = SHADOW_DISTANCE * half + (centre[:, 2] - lo[:, 2])  # every caster in front of the light camera
    eye = centre @ rot - sun[None] * dist[:, None]  # world
    view = torch.eye(4).repeat(len(eye), 1, 1)
    view[:, :3, :3], view[:, :3, 3] = rot, -(eye @ rot.T)
    f = (res / 2) * dist / (1.2 * half)  # the footprint with a margin of a few texels
    K = torch.zeros(len(eye), 3, 3)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, res / 2, res / 2, 1.0
    return view[:, None], K[:, None]


def sun_visibility(g: Gaussians, points: Tensor, env: Environment, backend: str = "auto",
                   res: int = SHADOW_RES, normals: Tensor | None = None) -> Tensor:
    """points [B, C, H, W, 3] world -> [B, C, H, W] visibility of the sun (3x3 percentage closer
    filtering of a splat shadow map drawn from the sun). normals [B, C, H, W, 3] (optional; zero
    where nothing is drawn) mark which points receive, offset the lookups off the surface and scale
    the depth bias with the surface's slope towards the light, against shadow acne."""
    sun = torch.as_tensor(env.sun_unit, dtype=torch.float32)
    B = points.shape[0]
    p = points.reshape(B, -1, 3)
    n = normals.reshape(B, -1, 3) if normals is not None else None
    receivers = p  # with normals, only pixels with a surface receive (the rest show the environment)
    if n is not None:
        receivers = torch.where(n.abs().sum(-1, keepdim=True) > 0, p, torch.full_like(p, math.nan))
    view, K = _light_camera(g, sun, res, receivers)
    k = SHADOW_STRIDE
    scales, opac, colors, _ = g.batched()
    casters = Gaussians(g.means[:, ::k], g.quats[:, ::k], scales[:, ::k] * math.sqrt(k), opac[:, ::k],
                        colors[:, ::k], _no_labels(g)[::k])
    sm = rasterize(casters, view, K, res, res, background=(0.0, 0.0, 0.0), backend=backend, far=1e6)
    depth = torch.where(sm.alpha[:, 0] > 0.2, sm.depth[:, 0], torch.full_like(sm.depth[:, 0], float("inf")))
    # close pin holes between splats seen edge-on from the light: nearest occluder in 3x3 texels
    depth = -torch.nn.functional.max_pool2d(-depth[:, None], 3, stride=1, padding=1)[:, 0]
    f = K[:, 0, None, 0, 0]

    def to_light(q):
        return torch.einsum("bij,bnj->bni", view[:, 0, :3, :3], q) + view[:, 0, None, :3, 3]

    pc = to_light(p)
    texel = pc[..., 2] / f  # metres per shadow-map pixel at that depth
    slope = torch.ones_like(texel)
    if n is not None:
        # normal offset: look the receiver up a few texels off its surface, so the splats' own depth
        # noise (discs, every 4th one widened) does not shadow the surface they make (acne)
        pc = to_light(p + n * (SHADOW_NORMAL_OFFSET * texel[..., None]))
        cos = (n @ -sun).abs().clamp(min=0.1)  # depth changes by tan(angle) per texel at a slant
        slope = 1.0 + (1.0 - cos**2).sqrt() / cos
    z = pc[..., 2]
    u = f * pc[..., 0] / z + K[:, 0, None, 0, 2]
    v = K[:, 0, None, 1, 1] * pc[..., 1] / z + K[:, 0, None, 1, 2]
    bias = SHADOW_BIAS_TEXELS * texel * slope + 0.005
    vis = torch.zeros_like(z)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iu, iv = (u - 0.5 + dx).round().long(), (v - 0.5 + dy).round().long()
            # the map covers every caster over the receivers: a point whose sun ray leaves it is lit
            # (clamping to the border instead smears border casters into endless streaks)
            inside = (iu >= 0) & (iu < res) & (iv >= 0) & (iv < res)
            occ = torch.gather(depth.reshape(B, -1), 1, iv.clamp(0, res - 1) * res + iu.clamp(0, res - 1))
            vis += ((z <= occ + bias) | ~inside).float()
    return (vis / 9).reshape(points.shape[:-1])


def pixel_rays(viewmats: Tensor, Ks: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Camera centres [B, C, 3] and world ray directions through pixel centres [B, C, H, W, 3]
    scaled so their camera z is 1 (so centre + depth * ray is the surface point)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs - cx)], -1)
    return camera_centers(viewmats), torch.einsum("bcji,bchwj->bchwi", viewmats[..., :3, :3], d)


def normal_planes(planes: list[Plane]) -> list[Plane]:
    """The planes with their unit normal as GBuffer.extra channels (for rasterize(..., extra=normals))."""
    out = []
    for p in planes:
        n = torch.nn.functional.normalize(torch.as_tensor(p.normal, dtype=torch.float32), dim=0)
        out.append(replace(p, extra=tuple(n.tolist())))
    return out


def sun_specular(nrm: Tensor, view: Tensor, to_sun: Tensor, albedo: Tensor, material: Tensor) -> Tensor:
    """The sun's GGX specular reflectance times n . l, per unit sun radiance: nrm, view (unit, camera to
    surface) and albedo (linear) [..., 3], to_sun [3] unit, material [..., 3] (roughness, metallic,
    transmission) -> [..., 3]; zero where the normal is zero or either direction is below the surface."""
    v = -view
    h = torch.nn.functional.normalize(v + to_sun, dim=-1)
    n_l, n_v = (nrm @ to_sun).clamp(min=0), (nrm * v).sum(-1).clamp(min=0)
    n_h, v_h = (nrm * h).sum(-1).clamp(min=0), (v * h).sum(-1).clamp(min=0)
    alpha = (material[..., 0] ** 2).clamp(min=MIN_ALPHA)
    a2 = alpha ** 2
    d = a2 / (math.pi * (n_h ** 2 * (a2 - 1) + 1) ** 2)
    k = alpha / 2
    g1 = lambda x: x / (x * (1 - k) + k).clamp(min=1e-6)  # noqa: E731
    f0 = DIELECTRIC_F0 + (albedo - DIELECTRIC_F0) * material[..., 1:2]
    fresnel = f0 + (1 - f0) * (1 - v_h[..., None]) ** 5
    spec = (d * g1(n_l) * g1(n_v) / (4 * n_v).clamp(min=1e-4))[..., None] * fresnel  # D F G / (4 n.l n.v) * n.l
    return torch.where(((n_l > 0) & (n_v > 0))[..., None], spec, torch.zeros_like(spec))


def pixel_materials(materials: Tensor, instance_id: Tensor) -> Tensor:
    """Per-pixel material from a per-instance table: materials [E + 1, C], instance_id [...] ->
    [..., C] on instance_id's device; ids past the table read its last row."""
    return materials.to(instance_id.device)[instance_id.long().clamp(0, materials.shape[0] - 1)]


def shade(g: Gaussians, gbuffer: GBuffer, planes: list[Plane], viewmats: Tensor, Ks: Tensor,
          env: Environment, *, backend: str = "auto", far: float = math.inf, materials: Tensor | None = None) -> Lit:
    """Shade a G-buffer rendered (with `planes` composited, over a black background) from these
    Gaussians and cameras: viewmats [B, C, 4, 4], Ks [B, C, 3, 3]; materials [E + 1, 3] roughness,
    metallic, transmission per instance id (row 0 = background; None = DEFAULT_MATERIAL everywhere),
    for the sun's specular term of the mirror cue. Normals come from
    gbuffer.extra when it was rendered with extra=splat_normals(...) and normal_planes(planes)
    (C = 1; no extra cost), else from one more splat pass per camera. Plus one shadow-map pass."""
    B, C, H, W = gbuffer.alpha.shape
    eye, rays = pixel_rays(viewmats, Ks, W, H)
    if gbuffer.extra is not None and gbuffer.extra.shape[-1] == 3:
        raw = gbuffer.extra
    else:
        raw = torch.stack([_normal_pass(g, planes, viewmats[:, c:c + 1], Ks[:, c:c + 1], eye[:, c], W, H, backend,
                                        far) for c in range(C)], 1)
    # planes run to the horizon here, as in the path tracer (the coarse G-buffer may stop them at a
    # raster camera's far clip); compositing again only fills pixels the first pass left open
    gbuffer = composite_planes(replace(gbuffer, extra=raw), normal_planes(planes), viewmats, Ks)
    covered = gbuffer.alpha > 1e-3
    nrm = torch.nn.functional.normalize(gbuffer.extra, dim=-1)  # [B, C, H, W, 3]
    nrm = torch.where(covered[..., None], nrm, torch.zeros_like(nrm))
    points = eye[:, :, None, None] + gbuffer.depth[..., None] * rays
    vis = sun_visibility(g, points, env, backend, normals=nrm) if env.sun_strength > 0 else torch.zeros_like(gbuffer.alpha)
    to_sun = -torch.as_tensor(env.sun_unit, dtype=torch.float32)
    sun = torch.as_tensor(env.sun_color, dtype=torch.float32) * env.sun_strength
    cos = (nrm @ to_sun).clamp(min=0)
    direct = cos[..., None] * vis[..., None] * sun
    albedo = gbuffer.rgb / gbuffer.alpha[..., None].clamp(min=1e-6)
    surface = albedo * (irradiance(env, nrm) + direct) / math.pi
    view = torch.nn.functional.normalize(rays, dim=-1)
    background = env_radiance(env, view)
    mirrored = view - 2 * (view * nrm).sum(-1, keepdim=True) * nrm
    if materials is None:
        material = torch.tensor(DEFAULT_MATERIAL, device=nrm.device).expand(*covered.shape, 3)
    else:
        material = pixel_materials(materials, gbuffer.instance_id)
    glare = (sun_specular(nrm, view, to_sun, albedo, material) * vis[..., None] * sun).clamp(max=SUN_SPECULAR_MAX)
    seen = env_radiance(env, mirrored) + glare
    reflection = torch.where(covered[..., None], seen, torch.zeros_like(mirrored))
    a = gbuffer.alpha.clamp(0, 1)[..., None]
    return Lit(rgb=a * surface + (1 - a) * background, normals=nrm, sun_visibility=vis, sun_cos=cos,
               reflection=reflection)


def _normal_pass(g: Gaussians, planes, view, K, eye, W, H, backend, far) -> Tensor:
    """[B, H, W, 3] alpha-normalised normals of one camera from a splat pass of its own."""
    plain = Gaussians(g.means, g.quats, g.scales, g.opacities, g.colors, _no_labels(g))
    gb = rasterize(plain, view, K, W, H, backend=backend, extra=splat_normals(g, eye))
    gb = composite_planes(gb, normal_planes(planes), view, K, far=far)
    return gb.extra[:, 0]


def _no_labels(g: Gaussians) -> Tensor:
    """All-zero instance ids: the extra passes need no labels, and one label keeps their one-hot
    instance channels at width 1."""
    return torch.zeros_like(g.instance_id)



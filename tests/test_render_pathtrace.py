"""Cycles reference and lit splat render: conventions checked against each other and analytic cases.

One small scene (a sphere and a box on a plane, the courtyard HDRI rotated 30 degrees, a sun) is
built once per module in both renderers.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("bpy")

from render import Plane, SplatScene, composite_planes, linear_to_srgb, mesh_to_splats, rasterize  # noqa: E402
from render.rasterize import rasterize_reference  # noqa: E402
from render.camera import intrinsics, look_at  # noqa: E402
from render.environment import Environment, env_radiance, irradiance, load_hdri  # noqa: E402
from render.errors import RenderError  # noqa: E402
from render.lighting import normal_planes, shade, splat_normals, sun_visibility  # noqa: E402
from render.pathtrace import PathTracer, PTCamera, PTMaterial, PTMesh, PTSettings, corner_normals  # noqa: E402

RES = 96
ENV = Environment(hdri="courtyard", rotation=30.0, strength=0.5, sun_strength=3.0)


def _meshes():
    import trimesh

    s = trimesh.creation.icosphere(3, radius=0.1)
    b = trimesh.creation.box((0.2, 0.2, 0.2))
    return s, b


@pytest.fixture(scope="module")
def scene():
    s, b = _meshes()
    pos = np.array([[0.0, 0.0, 0.1], [0.3, 0.2, 0.1]])
    quat = np.array([[1.0, 0, 0, 0], [0.92388, 0, 0, 0.38268]])
    view = look_at((1.2, -1.0, 0.8), (0.0, 0.0, 0.1)).float()
    K = intrinsics(45.0, RES, RES).float()
    K_shift = K.clone()
    K_shift[0, 2] += 7.0  # principal point off centre
    K_shift[1, 2] -= 5.0
    plane = np.array([[-20, -20, 0], [20, -20, 0], [20, 20, 0], [-20, 20, 0]], float)
    pt_meshes = [PTMesh(0, 1, s.vertices, s.faces, material=PTMaterial((0.8, 0.2, 0.2), roughness=0.6)),
                 PTMesh(1, 2, b.vertices, b.faces, material=PTMaterial((0.2, 0.6, 0.9), roughness=0.6)),
                 PTMesh(-1, 3, plane, np.array([[0, 1, 2], [0, 2, 3]]), material=PTMaterial((0.5, 0.5, 0.5)))]
    sky_view = look_at((0.0, 0.0, 1.0), (1.0, 0.3, 1.5)).float()
    sky_K = intrinsics(60.0, 96, 64).float()
    cams = {"main": PTCamera(view.numpy(), K.numpy(), RES, RES),
            "shift": PTCamera(view.numpy(), K_shift.numpy(), RES, RES),
            "sky": PTCamera(sky_view.numpy(), sky_K.numpy(), 96, 64)}
    pt = PathTracer(pt_meshes, cams, ENV, PTSettings(samples=16, seed=1))
    frames = {name: pt.render(name, pos, quat) for name in cams}
    again = pt.render("main", pos, quat)
    splats = SplatScene([mesh_to_splats(s.vertices, s.faces, base_color=(0.8, 0.2, 0.2), density=48000.0),
                         mesh_to_splats(b.vertices, b.faces, base_color=(0.2, 0.6, 0.9), density=48000.0)], [0, 1], [1, 2])
    g = splats.posed(torch.tensor(pos, dtype=torch.float32)[None], torch.tensor(quat, dtype=torch.float32)[None])
    planes = [Plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.214, 0.214, 0.214), 3)]
    pt.close()
    return dict(frames=frames, again=again, g=g, planes=planes, view=view, K=K, K_shift=K_shift,
                sky_view=sky_view, sky_K=sky_K)


def _gbuffer(scene, K):
    v, k = scene["view"][None, None], K[None, None]
    gb = rasterize(scene["g"], v, k, RES, RES)
    return composite_planes(gb, scene["planes"], v, k), v, k


def test_same_seed_same_image(scene):
    np.testing.assert_array_equal(scene["frames"]["main"].rgb, scene["again"].rgb)


@pytest.mark.parametrize("cam", ["main", "shift"])
def test_object_index_matches_splat_instance_labels(scene, cam):
    """Cameras, poses and labels agree between Cycles and the splat G-buffer (IoU >= 0.9)."""
    gb, _, _ = _gbuffer(scene, scene["K"] if cam == "main" else scene["K_shift"])
    ours = gb.instance_id[0, 0].numpy()
    theirs = scene["frames"][cam].instance
    for i in (1, 2, 3):
        a, b = ours == i, theirs == i
        assert a.sum() > 20, f"instance {i} barely visible"
        iou = (a & b).sum() / (a | b).sum()
        assert iou >= 0.9, f"instance {i}: IoU {iou:.3f}"


def test_depth_pass_is_planar_depth_of_the_plane(scene):
    """Cycles' Z pass is depth along the camera's +z, as the G-buffer's: check on the ground plane."""
    gb, _, _ = _gbuffer(scene, scene["K"])
    f = scene["frames"]["main"]
    m = (f.instance == 3) & (gb.instance_id[0, 0].numpy() == 3) & (gb.alpha[0, 0].numpy() > 0.999)
    rel = np.abs(f.depth[m] / gb.depth[0, 0].numpy()[m] - 1)
    assert np.median(rel) < 1e-3 and np.quantile(rel, 0.99) < 0.01, (np.median(rel), np.quantile(rel, 0.99))


def test_environment_lookup_matches_cycles_background(scene):
    """env_radiance (equirect mapping and rotation) is what Cycles' camera sees of the sky."""
    from render.lighting import pixel_rays

    _, rays = pixel_rays(scene["sky_view"][None, None], scene["sky_K"][None, None], 96, 64)
    ours = env_radiance(ENV, rays[0, 0]).numpy()
    f = scene["frames"]["sky"]
    m = f.instance == 0
    assert m.mean() > 0.9
    rel = np.abs(ours[m] - f.rgb[m]).mean() / f.rgb[m].mean()
    assert rel < 0.08, rel
    wrong = env_radiance(Environment(hdri="courtyard", rotation=0.0, strength=0.5), rays[0, 0]).numpy()
    assert np.abs(wrong[m] - f.rgb[m]).mean() / f.rgb[m].mean() > 3 * rel  # the rotation matters


def test_irradiance_uniform_is_exact_and_hdri_matches_brute_force():
    n = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    uni = Environment(ambient=(0.2, 0.3, 0.4))
    torch.testing.assert_close(irradiance(uni, n), math.pi * torch.tensor([0.2, 0.3, 0.4]).expand(16, 3))
    img = torch.from_numpy(load_hdri("forest", max_width=128)).double()
    h, w = img.shape[:2]
    el = (0.5 - (torch.arange(h) + 0.5) / h) * math.pi
    ph = (0.5 - (torch.arange(w) + 0.5) / w) * 2 * math.pi
    E, P = torch.meshgrid(el, ph, indexing="ij")
    d = torch.stack((E.cos() * P.cos(), E.cos() * P.sin(), E.sin()), -1)
    dw = E.cos() * (math.pi / h) * (2 * math.pi / w)
    brute = torch.einsum("hw,nhw,hwc->nc", dw.double(), torch.einsum("nk,hwk->nhw", n.double(), d.double()).clamp(min=0), img)
    sh = irradiance(Environment(hdri="forest"), n).double()
    rel = (sh - brute).abs().mean() / brute.mean()
    assert rel < 0.1, rel  # 9 terms capture diffuse light to a few percent (Ramamoorthi & Hanrahan)


def test_sun_visibility_shadow_under_box():
    import trimesh

    b = trimesh.creation.box((0.4, 0.4, 0.05))
    g = SplatScene([mesh_to_splats(b.vertices, b.faces)], [0], [1]).posed(
        torch.tensor([[[0.0, 0.0, 0.5]]]), torch.tensor([[[1.0, 0, 0, 0]]]))
    env = Environment(sun_direction=(0.0, 0.0, -1.0))
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.15, 0.1, 0.0], [0.0, 0.0, 0.6]])[None, None, None]
    vis = sun_visibility(g, pts, env)[0, 0, 0]
    assert vis[0] < 0.05 and vis[2] < 0.05  # below the slab
    assert vis[1] > 0.95 and vis[3] > 0.95  # beside it, and above it


def test_lit_render_is_closer_to_cycles_than_coarse(scene):
    gb, v, k = _gbuffer(scene, scene["K"])
    lit = shade(scene["g"], gb, scene["planes"], v, k, ENV)
    ref = linear_to_srgb(torch.from_numpy(scene["frames"]["main"].rgb))

    def psnr(x):
        return float(-10 * torch.log10(((linear_to_srgb(x) - ref) ** 2).mean()))

    p_lit, p_coarse = psnr(lit.rgb[0, 0]), psnr(gb.rgb[0, 0])
    assert p_lit > p_coarse + 1.0, (p_lit, p_coarse)
    n = lit.normals[0, 0][gb.instance_id[0, 0] == 3]
    assert (n[:, 2] > 0.99).float().mean() > 0.95  # the ground's normal is +z


def test_corner_normals_keep_box_edges_hard_and_sphere_smooth():
    s, b = _meshes()
    nb = corner_normals(np.asarray(b.vertices, np.float32), np.asarray(b.faces), 35.0)
    axes = np.abs(nb).max(1)
    np.testing.assert_allclose(axes, 1.0, atol=1e-5)  # every box corner keeps its face's axis normal
    ns = corner_normals(np.asarray(s.vertices, np.float32), np.asarray(s.faces), 35.0)
    radial = np.asarray(s.vertices)[np.asarray(s.faces).ravel()]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert (ns * radial).sum(1).min() > 0.99  # sphere corners get the smooth (radial) normal


def test_bad_inputs_raise_render_error():
    with pytest.raises(RenderError, match="hdri"):
        Environment(hdri="mars")
    with pytest.raises(RenderError, match="samples"):
        PTSettings(samples=0)
    with pytest.raises(RenderError, match="camera"):
        PathTracer([], {}, ENV)


def test_extra_channels_match_reference_and_a_colour_pass(scene):
    """rasterize(extra=...) composites extra channels in the same pass: equal to the per-pixel
    reference implementation, and to rendering the same values as colours in a pass of their own."""
    g, K, v = scene["g"], scene["K"] * 0.25, scene["view"]
    K[2, 2] = 1.0
    n = splat_normals(g, torch.tensor([[1.2, -1.0, 0.8]]))
    fast = rasterize(g, v[None, None], K[None, None], 24, 24, extra=n)
    ref = rasterize_reference(g, v[None, None], K[None, None], 24, 24, extra=n)
    torch.testing.assert_close(fast.extra, ref.extra, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.rgb, ref.rgb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.instance_id, ref.instance_id)  # labels unaffected by the extra block
    from render import Gaussians

    as_colour = rasterize(Gaussians(g.means, g.quats, g.scales, g.opacities, n * 0.5 + 0.5, g.instance_id),
                          v[None, None], K[None, None], 24, 24)
    m = fast.alpha > 0.05
    decoded = as_colour.rgb / as_colour.alpha[..., None].clamp(min=1e-6) * 2 - 1
    torch.testing.assert_close(fast.extra[m], decoded[m], atol=1e-4, rtol=1e-4)


def test_planes_composite_their_extra_channels(scene):
    g, v, K = scene["g"], scene["view"][None, None], scene["K"][None, None]
    eye = torch.tensor([[1.2, -1.0, 0.8]])
    gb = composite_planes(rasterize(g, v, K, RES, RES, extra=splat_normals(g, eye)), normal_planes(scene["planes"]),
                          v, K)
    ground = (gb.instance_id == 3) & (gb.alpha > 0.999)
    assert (gb.extra[ground][:, 2] > 0.999).float().mean() > 0.98  # (the rest: splat edges blending in)
    lit = shade(g, gb, scene["planes"], v, K, ENV)
    lit2 = shade(g, composite_planes(rasterize(g, v, K, RES, RES), scene["planes"], v, K), scene["planes"], v, K, ENV)
    torch.testing.assert_close(lit.rgb, lit2.rgb, atol=1e-4, rtol=1e-4)  # one pass or two: the same image


def test_far_casters_do_not_wash_out_a_near_shadow():
    """The shadow map fits the receivers: an object flung 20 m away (a real case in random training
    scenes) must not stretch the map's texels, and with them the depth bias, past a 0.3 m box's own
    height, which erased its shadow before (session 11)."""
    import trimesh

    near = mesh_to_splats(*_box_mesh(trimesh, 0.3))
    far = mesh_to_splats(*_box_mesh(trimesh, 0.2))
    g = SplatScene([near, far], [0, 1], [1, 2]).posed(torch.tensor([[[0.0, 0.0, 0.15], [14.0, -14.0, 1.0]]]),
                                                      torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]]))
    env = Environment(sun_direction=(1.0, 0.0, -1.0))  # 45 degrees: the shadow runs 0.3 m along +x
    ang = torch.linspace(0, 2 * math.pi, 37)[:-1]
    ring = torch.stack((1.2 * ang.cos(), 1.2 * ang.sin(), torch.zeros_like(ang)), -1)  # what a camera sees
    probe = torch.tensor([[0.3, 0.0, 0.0], [0.8, 0.0, 0.0], [0.3, 0.5, 0.0]])
    vis = sun_visibility(g, torch.cat((probe, ring))[None, None, None], env)[0, 0, 0]
    assert vis[0] < 0.05, vis[0]  # inside the box's shadow
    assert vis[1] > 0.95 and vis[2] > 0.95  # beyond its tip, and beside it


def _box_mesh(trimesh, side):
    b = trimesh.creation.box((side, side, side))
    return b.vertices, b.faces


def test_points_beyond_the_shadow_map_are_lit():
    """A slab that spans its shadow map must not smear into endless streaks: ground points whose
    sun ray misses every caster are lit, whatever shadow-map texel they would clamp to."""
    import trimesh

    b = trimesh.creation.box((0.4, 0.2, 0.05))
    g = SplatScene([mesh_to_splats(b.vertices, b.faces, density=48000.0)], [0], [1]).posed(
        torch.tensor([[[0.0, 0.0, 0.5]]]), torch.tensor([[[1.0, 0, 0, 0]]]))
    env = Environment(sun_direction=(0.3, -0.5, -1.0))
    ang = torch.linspace(0, 2 * math.pi, 73)[:-1]
    ring = torch.stack((1.5 * ang.cos(), 1.5 * ang.sin(), torch.zeros_like(ang)), -1)
    below = torch.tensor([[0.5 * 0.3, -0.5 * 0.5, 0.0]])  # straight down the sun ray from the slab's centre
    vis = sun_visibility(g, torch.cat((ring, below))[None, None, None], env)[0, 0, 0]
    assert (vis[:-1] > 0.99).all(), vis[:-1].min()
    assert vis[-1] < 0.05


def test_mirror_cue_carries_the_sun_glare_and_not_in_shadow():
    """Lit.reflection, the refiner's cue for specular light, holds the environment along the mirrored
    view ray plus the sun's GGX specular radiance (the environment map has no sun disc): on a floor
    seen so that the image centre mirrors straight onto the sun, the cue there is the environment plus
    the analytic microfacet value (n . h = 1), it falls off away from the centre, a rougher floor's
    glare is dimmer at the centre and wider, a metal's Fresnel is its albedo, and a caster's shadow
    removes it."""
    import trimesh

    plane = Plane(point=(0.0, 0.0, 0.0), normal=(0.0, 0.0, 1.0), color=(0.5, 0.5, 0.5), instance_id=2)
    to_sun = torch.tensor([0.0, 2.0, 1.0]) / math.sqrt(5.0)  # the centre ray (0, 2, -1) mirrored off the floor
    env = Environment(ambient=(0.1, 0.1, 0.1), sun_direction=tuple((-to_sun).tolist()), sun_strength=4.0)
    view = look_at((0.0, -2.0, 1.0), (0.0, 0.0, 0.0)).float()[None, None]
    K = intrinsics(40.0, 33, 33).float()[None, None]
    box = mesh_to_splats(*_box_mesh(trimesh, 0.1))

    def cue(at, materials=None):
        g = SplatScene([box], [0], [1]).posed(torch.tensor([[at]]), torch.tensor([[[1.0, 0, 0, 0]]]))
        gb = composite_planes(rasterize(g, view, K, 33, 33), [plane], view, K)
        return shade(g, gb, [plane], view, K, env, materials=materials).reflection[0, 0]  # [H, W, 3]

    def expected(roughness, f0):  # GGX at n . h = 1, n . l = n . v = v . h = 1 / sqrt(5)
        c, alpha = 1 / math.sqrt(5.0), roughness ** 2
        g1 = c / (c * (1 - alpha / 2) + alpha / 2)
        return 0.1 + 4.0 / (math.pi * alpha ** 2) * g1 ** 2 / (4 * c) * (f0 + (1 - f0) * (1 - c) ** 5)

    far = (3.0, 3.0, 0.05)
    open_floor = cue(far)  # no table: roughness 0.5, dielectric
    torch.testing.assert_close(open_floor[16, 16], torch.full((3,), expected(0.5, 0.04)), atol=0.03, rtol=0)
    row = open_floor[16, :, 0]
    assert row[16] > row[8] + 0.05 > row[1] + 0.1 and row[1] > 0.1 + 1e-3  # a lobe, falling off from the centre
    assert (open_floor[..., 0] >= 0.1 - 1e-5).all()  # the environment part is unchanged
    rough = cue(far, torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.8, 0, 0]]))[16, :, 0]  # the floor is id 2
    assert abs(float(rough[16]) - expected(0.8, 0.04)) < 0.03 and rough[16] < row[16]
    assert (rough[1] - 0.1) / (rough[16] - 0.1) > (row[1] - 0.1) / (row[16] - 0.1)  # wider: less fall-off
    metal = cue(far, torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.8, 1.0, 0]]))[16, 16, 0]
    assert abs(float(metal) - expected(0.8, 0.5)) < 0.05  # F0 = the floor's albedo
    torch.testing.assert_close(cue((0.0, 0.2, 0.1))[16, 16], torch.full((3,), 0.1), atol=0.01, rtol=0)  # shadowed


def test_pixel_materials_reads_the_table_by_instance_id():
    """shade's material lookup: row id of a [E + 1, 3] table per pixel; ids past the table clamp."""
    from render.lighting import pixel_materials

    table = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0.9, 1, 0]])
    ids = torch.tensor([[[[0, 1], [2, 7]]]])  # [B=1, C=1, H=2, W=2]
    out = pixel_materials(table, ids)
    assert out.shape == (1, 1, 2, 2, 3)
    torch.testing.assert_close(out[0, 0].reshape(4, 3), table[[0, 1, 2, 2]])


def test_shipped_hdris_are_found_without_importing_bpy():
    """hdri_path locates Blender's HDRIs on disk without `import bpy`, which fails once Genesis has
    loaded its older Embree: a run lit by an HDRI but not path-traced needs only the files."""
    import subprocess
    import sys

    code = ("import sys; from render.environment import HDRI_NAMES, hdri_path; "
            "paths = [hdri_path(n) for n in HDRI_NAMES]; assert all(p.is_file() for p in paths), paths; "
            "assert 'bpy' not in sys.modules; print(len(paths))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 8

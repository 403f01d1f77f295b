"""mesh_to_splats / primitive_splats / particle_splats."""

import numpy as np
import pytest
import torch

from render import RenderError, SplatAsset, mesh_to_splats, particle_splats, primitive_splats
from render.assets import PLANE_DENSITY, linear_to_srgb, srgb_to_linear
from render.quat import quat_to_rotmat

SQUARE_V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float) * 0.5  # 0.25 m^2 at z=0
SQUARE_F = np.array([[0, 1, 2], [0, 2, 3]])


def test_count_follows_density_and_cap():
    assert mesh_to_splats(SQUARE_V, SQUARE_F, density=4000).num_gaussians == 1000
    assert mesh_to_splats(SQUARE_V, SQUARE_F, density=4000, max_gaussians=300).num_gaussians == 300
    assert mesh_to_splats(SQUARE_V, SQUARE_F, density=1e-6).num_gaussians == 1


def test_box_samples_lie_on_the_surface_with_thin_axis_along_the_normal():
    a = primitive_splats("box", size=(0.2, 0.1, 0.4), density=5000)
    area = 2 * (0.2 * 0.1 + 0.2 * 0.4 + 0.1 * 0.4)
    assert a.num_gaussians == round(5000 * area)
    half = torch.tensor([0.1, 0.05, 0.2])
    m = a.means
    assert (m.abs() <= half + 1e-6).all()
    # On a face: one coordinate sits at +-half extent; its axis is the face normal.
    face_axis = ((m.abs() - half).abs() < 1e-6).float().argmax(dim=1)
    normal = quat_to_rotmat(a.quats)[:, :, 2]  # the thin (third) scale's axis
    assert (normal.abs().argmax(dim=1) == face_axis).all()
    torch.testing.assert_close(normal.abs().max(dim=1).values, torch.ones(a.num_gaussians), atol=1e-5, rtol=0)
    assert (a.scales[:, 2] < 0.2 * a.scales[:, 0]).all() and torch.equal(a.scales[:, 0], a.scales[:, 1])
    spacing = (area / a.num_gaussians) ** 0.5
    assert 0.5 * spacing < a.scales[0, 0] < 1.5 * spacing


def test_sphere_and_cylinder_match_genesis_frames():
    s = primitive_splats("sphere", radius=0.3, density=3000)
    r = s.means.norm(dim=1)
    assert (r > 0.29).all() and (r <= 0.3 + 1e-6).all()  # icosphere facets sit just inside
    c = primitive_splats("cylinder", radius=0.1, height=0.5, density=3000)
    assert c.means[:, 2].min() >= -0.25 - 1e-6 and c.means[:, 2].max() <= 0.25 + 1e-6  # axis z, centred
    assert (c.means[:, :2].norm(dim=1) <= 0.1 + 1e-6).all()


def test_plane_is_a_finite_square_at_z0_with_its_own_density():
    p = primitive_splats("plane", size=(4.0, 4.0))
    assert p.num_gaussians == round(PLANE_DENSITY * 16)
    assert p.means[:, 2].abs().max() < 1e-6 and p.means[:, :2].abs().max() <= 2.0 + 1e-6
    # Systematic + low-discrepancy sampling: every 0.5 m cell of the square gets its share.
    cells = torch.histogramdd(p.means[:, :2], bins=[8, 8], range=[-2.0, 2.0, -2.0, 2.0]).hist
    share = p.num_gaussians / 64
    assert cells.min() > 0.7 * share and cells.max() < 1.3 * share


def test_texture_colours_follow_uv():
    red_blue = np.zeros((8, 8, 3), dtype=np.uint8)
    red_blue[:, :4] = (255, 0, 0)
    red_blue[:, 4:] = (0, 0, 255)
    uv = SQUARE_V[:, :2] / 0.5  # u = x / 0.5
    a = mesh_to_splats(SQUARE_V, SQUARE_F, texture=red_blue, uv=uv, density=2000)
    x = a.means[:, 0]
    left, right = x < 0.2, x > 0.3  # skip the bilinear seam at u = 0.5
    torch.testing.assert_close(a.colors[left], torch.tensor([1.0, 0, 0]).expand(int(left.sum()), 3))
    torch.testing.assert_close(a.colors[right], torch.tensor([0, 0, 1.0]).expand(int(right.sum()), 3))


def test_vertex_and_base_colours_and_srgb():
    vc = np.array([[0, 0, 0], [255, 255, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)
    a = mesh_to_splats(SQUARE_V, SQUARE_F, vertex_colors=vc, srgb=False)
    # Barycentric blend of black at x=0 and white at x=0.5 along the first face's edge direction.
    assert a.colors.min() >= 0 and a.colors.max() <= 1 and a.colors.std() > 0.1
    b = mesh_to_splats(SQUARE_V, SQUARE_F, base_color=(0.5, 0.5, 0.5))
    torch.testing.assert_close(b.colors[0], srgb_to_linear(torch.tensor([0.5, 0.5, 0.5])))
    torch.testing.assert_close(b.colors[0], torch.tensor([0.21404, 0.21404, 0.21404]), atol=1e-5, rtol=0)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(torch.linspace(0, 1, 11))), torch.linspace(0, 1, 11))


def test_deterministic_for_a_seed():
    a = primitive_splats("sphere", radius=0.1, seed=3)
    b = primitive_splats("sphere", radius=0.1, seed=3)
    c = primitive_splats("sphere", radius=0.1, seed=4)
    assert torch.equal(a.means, b.means) and torch.equal(a.quats, b.quats)
    assert not torch.equal(a.means, c.means)


def test_particle_splats():
    p = particle_splats(5, radius=0.02, color=(1.0, 0.0, 0.0), srgb=False)
    assert isinstance(p, SplatAsset) and p.num_gaussians == 5
    assert torch.equal(p.means, torch.zeros(5, 3)) and torch.equal(p.scales, torch.full((5, 3), 0.02))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: primitive_splats("torus"), "unknown primitive kind"),
        (lambda: primitive_splats("box", size=(0.1, -1, 0.1)), "box size"),
        (lambda: mesh_to_splats(SQUARE_V, np.array([[0, 1, 9]])), "faces index"),
        (lambda: mesh_to_splats(SQUARE_V[:, :2], SQUARE_F), "vertices"),
        (lambda: mesh_to_splats(SQUARE_V, SQUARE_F, texture=np.zeros((4, 4, 3))), "uv"),
        (lambda: mesh_to_splats(SQUARE_V, SQUARE_F, density=-1), "density"),
        (lambda: mesh_to_splats(np.zeros((3, 3)), np.array([[0, 1, 2]])), "zero surface area"),
    ],
)
def test_bad_meshes_raise_render_error(call, match):
    with pytest.raises(RenderError, match=match):
        call()

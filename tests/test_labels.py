"""Sidecar labels (hybridsim.output.annotate) against analytic cases, with render/ directly (no Genesis):
a box at a known pose (3D box, centre pixel, 2D box, camera-frame normals, forward and backward flow)
and a sphere occluding another (visible fraction, pixels alone)."""

import math

import numpy as np
import pytest
import torch
import trimesh

from hybridsim.output import annotate
from render import Plane, SplatScene, intrinsics, look_at, mesh_to_splats, primitive_splats, rasterize

W = H = 96
SIZE = (0.4, 0.25, 0.15)  # box extents, metres
POS = (0.1, -0.05, 0.3)
YAW = 35.0  # degrees about z


def _quat_z(deg: float) -> torch.Tensor:
    h = math.radians(deg) / 2
    return torch.tensor([math.cos(h), 0.0, 0.0, math.sin(h)])


def _camera(eye=(1.2, -1.6, 1.3), target=POS):
    view, K = look_at(eye, target), intrinsics(45.0, W, H)
    return view[None, None], K[None, None]  # [1, 1, 4, 4], [1, 1, 3, 3]


@pytest.fixture(scope="module")
def box():
    mesh = trimesh.creation.box(extents=SIZE)
    asset = mesh_to_splats(mesh.vertices, mesh.faces, density=60000.0, seed=0, max_gaussians=40000)
    shape = annotate.InstanceShape(5, "box", "box", [0], [torch.as_tensor(mesh.vertices, dtype=torch.float32)])
    return SplatScene([asset], [0], [5]), shape, mesh


def _pose(pos=POS, yaw=YAW):
    return torch.tensor([[pos]], dtype=torch.float32), _quat_z(yaw)[None, None]


def test_box_3d_and_centre_pixel_at_a_known_pose(box):
    _, shape, _ = box
    pos, quat = _pose()
    centre, size, q = annotate.boxes_3d([shape], pos, quat)
    torch.testing.assert_close(centre[0, 0], torch.tensor(POS), atol=1e-5, rtol=0)
    torch.testing.assert_close(size[0, 0], torch.tensor(SIZE), atol=1e-5, rtol=0)
    torch.testing.assert_close(q[0, 0], _quat_z(YAW), atol=1e-6, rtol=0)
    view, K = _camera()
    uv, z = annotate.project(centre, view[:, 0], K[:, 0])
    pc = view[0, 0, :3, :3] @ torch.tensor(POS) + view[0, 0, :3, 3]
    want = (K[0, 0] @ (pc / pc[2]))[:2]
    torch.testing.assert_close(uv[0, 0], want, atol=1e-4, rtol=0)
    assert abs(float(z[0, 0]) - float(pc[2])) < 1e-5
    assert abs(float(uv[0, 0, 0]) - W / 2) < 1 and abs(float(uv[0, 0, 1]) - H / 2) < 1  # the camera looks at it


def test_multi_link_box_is_in_the_base_frame():
    """Two links: the box is the base link's frame around both links' points."""
    pts = torch.tensor([[-0.1, -0.1, -0.1], [0.1, 0.1, 0.1]])
    shape = annotate.InstanceShape(1, "arm", None, [0, 1], [pts, pts])
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # link 1 one metre above the base
    quat = torch.stack([_quat_z(90.0), _quat_z(0.0)])[None]
    centre, size, q = annotate.boxes_3d([shape], pos, quat)
    torch.testing.assert_close(centre[0, 0], torch.tensor([0.0, 0.0, 0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(size[0, 0], torch.tensor([0.2, 0.2, 1.2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(q[0, 0], _quat_z(90.0), atol=1e-6, rtol=0)


def test_box_2d_box_normals_and_flows(box):
    scene, _, mesh = box
    view, K = _camera()
    pos, quat = _pose()
    g = scene.posed(pos, quat)
    gb = rasterize(g, view, K, W, H)
    box2d, count = annotate.boxes_2d(gb.instance_id[:, 0], [5, 9])
    # 2D box of the projected corners (the silhouette of a convex box is the hull of its corners)
    R = annotate._rotmat(quat[0, 0])
    corners = torch.as_tensor(mesh.vertices, dtype=torch.float32) @ R.T + torch.tensor(POS)
    uv, _ = annotate.project(corners[None], view[:, 0], K[:, 0])
    want = torch.cat([uv[0].amin(0), uv[0].amax(0)])
    assert count[0, 1] == 0 and torch.isnan(box2d[0, 1]).all()  # an id that is not there
    assert (box2d[0, 0] - want).abs().max() < 1.5, (box2d[0, 0], want)
    # normals: the top face (+z of the box) seen from above points along the camera-frame image of +z
    d = torch.tensor([0.02, 0.01, 0.0])
    nxt = scene.posed(pos + d, quat)
    normals, fflow = annotate.normals_and_forward_flow(g, nxt.means, [], view, K, W, H)
    top = torch.tensor(POS) + torch.tensor([0.0, 0.0, SIZE[2] / 2])
    (u, v), _ = (t[0, 0] for t in annotate.project(top[None, None], view[:, 0], K[:, 0]))
    n = normals[0, 0, int(v), int(u)]
    want_n = view[0, 0, :3, :3] @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.dot(n.float(), want_n) > math.cos(math.radians(8)), (n, want_n)
    assert n[2] < 0  # facing the camera: against its +z (forward) axis
    assert (normals[0, 0][gb.alpha[0, 0] < 1e-3] == 0).all()
    # forward flow at the top face centre = projected displacement of that point
    (u2, v2), _ = (t[0, 0] for t in annotate.project((top + d)[None, None], view[:, 0], K[:, 0]))
    f = fflow[0, 0, int(v), int(u)]
    assert (f - torch.tensor([u2 - u, v2 - v])).abs().max() < 0.15, (f, (u2 - u, v2 - v))
    # backward flow (the main pass's flow, negated) at the moved frame's pixel points back
    gb2 = rasterize(nxt, view, K, W, H, prev_means=g.means)
    b = -gb2.flow[0, 0, int(v2), int(u2)]
    assert (b + torch.tensor([u2 - u, v2 - v])).abs().max() < 0.15, b
    # without a next frame there is no forward flow
    _, none = annotate.normals_and_forward_flow(g, None, [], view, K, W, H)
    assert (none == 0).all()


def test_plane_normal_in_camera_frame():
    view, K = _camera(eye=(0.0, -2.0, 2.0), target=(0.0, 0.0, 0.0))
    empty = SplatScene([primitive_splats("sphere", radius=0.05)], [0], [2]).posed(
        torch.tensor([[[5.0, 5.0, -5.0]]]), torch.tensor([[[1.0, 0, 0, 0]]]))  # out of view
    normals, _ = annotate.normals_and_forward_flow(empty, None, [Plane((0, 0, 0), (0, 0, 1), (0.5, 0.5, 0.5), 1)],
                                                   view, K, W, H)
    want = view[0, 0, :3, :3] @ torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(normals[0, 0, H - 5, W // 2], want, atol=2e-3, rtol=0)


def _disc_overlap(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs with radii r1, r2 and centres d apart."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a = r1**2 * math.acos((d**2 + r1**2 - r2**2) / (2 * d * r1)) + r2**2 * math.acos((d**2 + r2**2 - r1**2) / (2 * d * r2))
    return a - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))


def test_sphere_occluding_another_visible_fraction():
    """Two spheres on the optical axis of a distant camera (near-orthographic): the front one hides a known
    lens of the back one. Visible fraction = 1 - overlap / disc area; pixels alone = disc area."""
    r, gap = 0.3, 0.3  # radius; lateral offset of the back sphere
    s = primitive_splats("sphere", radius=r, density=12000.0, max_gaussians=12000)
    scene = SplatScene([s, s], [0, 1], [1, 2])
    pos = torch.tensor([[[0.0, 0.0, 0.0], [gap, 0.0, -1.0]]])  # camera looks down -z: sphere 1 in front
    quat = torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]])
    g = scene.posed(pos, quat)
    view = look_at((0.0, 0.0, 40.0), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))[None, None]
    K = intrinsics(2.0, 128, 128)[None, None]
    gb = rasterize(g, view, K, 128, 128)
    _, visible = annotate.boxes_2d(gb.instance_id[:, 0], [1, 2])
    alone = annotate.alone_pixels(g, [], [1, 2], view, K, 128, 128)[:, 0]
    f = K[0, 0, 0, 0].item()
    rad_front, rad_back = f * r / 40.0, f * r / 41.0  # projected radii, pixels
    d = f * gap / 41.0
    for i, rad in enumerate((rad_front, rad_back)):
        assert abs(alone[0, i].item() / (math.pi * rad**2) - 1) < 0.06, (alone, rad)
    frac = visible[0] / alone[0]
    assert abs(frac[0].item() - 1.0) < 0.02
    want = 1 - _disc_overlap(rad_front * 41 / 40, rad_back, d * 41 / 41) / (math.pi * rad_back**2)
    assert abs(frac[1].item() - want) < 0.05, (frac, want)
    assert 0.2 < want < 0.8  # a real partial occlusion


def test_boxes_2d_edges_are_pixel_edges():
    inst = torch.zeros((1, 6, 8), dtype=torch.int32)
    inst[0, 2:4, 3:7] = 4
    box, count = annotate.boxes_2d(inst, [4])
    assert box[0, 0].tolist() == [3.0, 2.0, 7.0, 4.0] and count[0, 0] == 8
    np.testing.assert_array_equal(annotate.boxes_2d(inst[0], [4])[0][0].numpy(), [3.0, 2.0, 7.0, 4.0])

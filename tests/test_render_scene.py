"""SplatScene posing: bodies, static assets, particles, batching."""

import math

import pytest
import torch

from render import (RenderError, SplatAsset, SplatScene, intrinsics, look_at, particle_splats,
                    primitive_splats, rasterize)
from render.quat import quat_mul, quat_to_rotmat, rotmat_to_quat


def _asset(means, quat=(1.0, 0.0, 0.0, 0.0)) -> SplatAsset:
    n = len(means)
    return SplatAsset(means=torch.tensor(means, dtype=torch.float32), quats=torch.tensor([quat] * n),
                      scales=torch.full((n, 3), 0.01), opacities=torch.full((n,), 0.9), colors=torch.rand(n, 3))


def _z_rot(deg: float) -> torch.Tensor:
    h = math.radians(deg) / 2
    return torch.tensor([math.cos(h), 0.0, 0.0, math.sin(h)])


def test_rotating_a_body_moves_its_gaussians():
    body = _asset([[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]], quat=(math.cos(0.3), math.sin(0.3), 0.0, 0.0))
    static = _asset([[5.0, 5.0, 5.0]])
    scene = SplatScene([static, body], body_index=[-1, 1], instance_id=[0, 7])
    pos = torch.tensor([[[9.0, 9.0, 9.0], [0.1, 0.2, 0.3]]])  # slot 0 is unused by this scene
    quat = torch.stack((torch.tensor([1.0, 0, 0, 0]), _z_rot(90.0)))[None]
    g = scene.posed(pos, quat)
    torch.testing.assert_close(g.means[0, 0], torch.tensor([5.0, 5.0, 5.0]))  # static: untouched
    torch.testing.assert_close(g.means[0, 1], torch.tensor([0.1, 1.2, 0.3]))  # x -> y, then translate
    torch.testing.assert_close(g.means[0, 2], torch.tensor([0.1, 0.2, 0.8]))
    # Orientation composes: R_world = R_body @ R_local.
    want = quat_to_rotmat(_z_rot(90.0)) @ quat_to_rotmat(body.quats[0])
    torch.testing.assert_close(quat_to_rotmat(g.quats[0, 1]), want, atol=1e-6, rtol=0)
    assert g.instance_id.tolist() == [0, 7, 7] and g.instance_id.dtype == torch.int32


def test_batched_environments_are_independent():
    scene = SplatScene([primitive_splats("box", size=(0.1, 0.2, 0.3), density=2000)], [0], [1])
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 1, 3, generator=gen)
    quat = torch.randn(3, 1, 4, generator=gen)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    g = scene.posed(pos, quat)
    assert g.means.shape == (3, scene.num_gaussians, 3)
    for b in range(3):
        one = scene.posed(pos[b:b + 1], quat[b:b + 1])
        torch.testing.assert_close(one.means[0], g.means[b])
        expected = scene.means @ quat_to_rotmat(quat[b, 0]).T + pos[b, 0]
        torch.testing.assert_close(g.means[b], expected, atol=1e-6, rtol=0)


def test_particle_assets_follow_particles():
    scene = SplatScene([primitive_splats("sphere", radius=0.05, density=500)], [0], [1])
    # radius 0.05 m: ~1 px std at 1 m in the 16 px image, so a splat covers pixel centres without a blur
    scene.add_particle_asset(particle_splats(4, radius=0.05), particle_index=[3, 1, 0, 2], instance_id=9)
    particles = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    g = scene.posed(torch.zeros(2, 1, 3), torch.tensor([1.0, 0, 0, 0]).expand(2, 1, 4), particles=particles)
    n0 = scene.num_gaussians - 4
    torch.testing.assert_close(g.means[:, n0:], particles[:, [3, 1, 0, 2]])
    assert (g.instance_id[n0:] == 9).all()
    # Renders: particles in front of a camera show up with their label.
    p = torch.tensor([[[0.0, 0.0, 1.0]] * 5])
    g = scene.posed(torch.tensor([[[0.0, 0.0, -5.0]]]), torch.tensor([[[1.0, 0, 0, 0]]]), particles=p)
    out = rasterize(g, torch.eye(4).view(1, 1, 4, 4), intrinsics(40.0, 16, 16).view(1, 1, 3, 3), 16, 16)
    assert out.instance_id[0, 0, 8, 8] == 9


def test_rotmat_quat_round_trip():
    q = torch.randn(100, 4, generator=torch.Generator().manual_seed(1))
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    torch.testing.assert_close(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_mul(q, torch.tensor([1.0, 0, 0, 0]).expand(100, 4)), q)


def test_posed_scene_renders_its_labels():
    box = primitive_splats("box", size=(0.3, 0.3, 0.3), density=3000, base_color=(1.0, 0.0, 0.0))
    scene = SplatScene([box], [0], [4])
    g = scene.posed(torch.zeros(1, 1, 3), torch.tensor([[[1.0, 0, 0, 0]]]))
    view = look_at((1.0, 0.8, 0.6), (0.0, 0.0, 0.0)).view(1, 1, 4, 4)
    out = rasterize(g, view, intrinsics(40.0, 24, 24).view(1, 1, 3, 3), 24, 24)
    assert out.instance_id[0, 0, 12, 12] == 4 and out.alpha[0, 0, 12, 12] > 0.99
    assert out.rgb[0, 0, 12, 12, 0] > 0.9 and out.rgb[0, 0, 12, 12, 1:].max() < 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: SplatScene([_asset([[0, 0, 0]])], [0, 1], [1]), "one body_index"),
        (lambda s: SplatScene([_asset([[0, 0, 0]])], [-3], [1]), "body_index"),
        (lambda s: s.posed(torch.zeros(1, 1, 3), torch.zeros(1, 1, 4)), "only K=1"),
        (lambda s: s.posed(torch.zeros(1, 2, 3), torch.zeros(1, 3, 4)), "body_quat"),
        (lambda s: s.add_particle_asset(particle_splats(2), [0], 1), "particle_index"),
    ],
)
def test_bad_scene_inputs_raise_render_error(call, match):
    scene = SplatScene([_asset([[0, 0, 0]]), _asset([[1, 0, 0]])], [-1, 1], [0, 1])
    with pytest.raises(RenderError, match=match):
        call(scene)


def test_particles_required_once_added():
    scene = SplatScene([_asset([[0, 0, 0]])], [-1], [0])
    scene.add_particle_asset(particle_splats(2), [0, 1], 3)
    with pytest.raises(RenderError, match="particles"):
        scene.posed(torch.zeros(1, 1, 3), torch.tensor([[[1.0, 0, 0, 0]]]))

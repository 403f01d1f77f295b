"""Genesis world: gravity, batching with derived seeds, determinism, save/restore, blow-ups, cameras.

One scene layout (tests/data/drop.yaml) is built once per module and shared; Genesis compiles its
kernels on the first build (minutes on a cold cache), later builds take seconds.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.config import compose
from hybridsim.scenario.sampling import initial_offsets
from hybridsim.scenario.seeding import derive_seed, env_seeds

DATA = Path(__file__).parent / "data"
G = 9.81


def _cfg(n_envs=4, **over):
    extra = [f"{k}={v}" for k, v in over.items()]
    return compose([f"scenario={DATA / 'drop.yaml'}", f"n_envs={n_envs}", "render.enabled=false", *extra])


@pytest.fixture(scope="module")
def sim():
    from hybridsim.pipeline import Simulation

    return Simulation(_cfg())


@pytest.fixture(scope="module")
def rollout(sim):
    sim.reset()
    return [f.state for f in sim.frames()]


def test_free_fall_matches_gravity(sim, rollout):
    k = sim.world.body_slot("box")
    z0 = rollout[0].body_pos[:, k, 2]
    checked = 0
    for s in rollout:
        if 0.25 <= s.t and s.body_pos[:, k, 2].min() > 0.3:  # before contact; semi-implicit Euler's
            fall = (z0 - s.body_pos[:, k, 2]).double()  # error is dt/t of the fall: < 1% from t = 0.25 s
            expected = 0.5 * G * s.t**2
            assert torch.allclose(fall, torch.full_like(fall, expected), rtol=0.01), (s.t, fall, expected)
            checked += 1
    assert checked >= 5


def test_envs_have_derived_seeds_and_offsets(sim, rollout):
    assert sim.seeds == env_seeds(7, 0, 4) and len(set(sim.seeds)) == 4
    k = sim.world.body_slot("box")
    xy = rollout[0].body_pos[:, k, :2].double().numpy()
    expected = initial_offsets(sim.scenario, sim.seeds)["box"][:, :2]
    np.testing.assert_allclose(xy, expected, atol=1e-5)
    assert derive_seed(7, "episode", 0, "env", 2) == sim.seeds[2]


def test_envs_are_independent(sim):
    """An impulse on env 0 changes env 0 only; envs 1-3 stay bit-identical."""
    w = sim.world
    sim.reset()
    snap = w.save()
    base = _roll(w, 10)
    w.restore(snap)
    w.apply_impulse("box", np.array([[3.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    kicked = _roll(w, 10)
    assert not torch.equal(base[:, 0], kicked[:, 0])
    assert torch.equal(base[:, 1:], kicked[:, 1:])
    k = w.body_slot("box")
    # An impulse of 3 N s on 1 kg: +3 m/s along x, exactly (gravity does not act on x).
    np.testing.assert_allclose(float(kicked[-1, 0, k, 0] - base[-1, 0, k, 0]), 3.0 * 10 * 0.01, rtol=1e-3)


def _roll(w, n):
    out = []
    for _ in range(n):
        w.step()
        out.append(w.state(contacts=False).body_pos.clone())
    return torch.stack(out)  # [n, B, K, 3]


def test_save_restore_replay_is_bit_identical(sim):
    sim.reset()
    for _ in range(8):
        sim.step()
    snap = sim.world.save()
    first = [sim.step().state for _ in range(8)]  # includes the timed impulse at 0.5 s
    sim.world.restore(snap)
    sim.frame_index, sim._next_event = 8, 0
    sim._next_event = sum(e.step <= sim.world.step_count for e in sim._events)
    second = [sim.step().state for _ in range(8)]
    for a, b in zip(first, second):
        assert torch.equal(a.body_pos, b.body_pos) and torch.equal(a.body_quat, b.body_quat)


def test_same_seed_same_poses_in_a_fresh_world(sim, rollout):
    from hybridsim.pipeline import Simulation

    other = Simulation(_cfg(reference="false"))
    again = [f.state for f in other.frames()]
    assert len(again) == len(rollout)
    for a, b in zip(rollout, again):
        assert torch.equal(a.body_pos, b.body_pos)


def test_timed_event_fires_on_its_step(sim):
    sim.reset()
    fired = {f.index: f.fired for f in sim.frames() if f.fired}
    # fires before the physics step at t = 0.5 s (frame 10 shows the state just before it),
    # so frame 11 is the first frame it acts on and the one that reports it.
    assert fired == {int(0.5 * 20) + 1: [0]}


def test_blow_up_is_a_clear_error(sim):
    from physics import PhysicsError

    sim.reset()
    B = sim.world.n_envs
    sim.world.set_velocity("ball", np.tile([500.0, 0, 0], (B, 1)), np.zeros((B, 3)))
    with pytest.raises(PhysicsError, match=r"blew up at step \d+.*entity 'ball'.*timing.dt"):
        sim.world.step()
    sim.reset()


def test_reference_render_and_camera_matrices(sim):
    from physics.camera import intrinsics, look_at

    frame = sim.reset()
    ref = frame.reference["main"]
    assert ref.rgb.shape == (4, 48, 64, 3) and ref.rgb.dtype == np.uint8
    assert ref.depth.shape == (4, 48, 64)
    k_ball = sim.world.body_slot("ball")
    assert (ref.body == k_ball).any(), "the ball must be visible in the reference segmentation"
    view, K = sim.world.camera_matrices("main")
    cam = sim.scenario.cameras[0]
    np.testing.assert_allclose(view.reshape(-1, 4, 4)[0], look_at(cam.pos, cam.lookat, cam.up), atol=1e-5)
    np.testing.assert_allclose(K, intrinsics(cam.fov, *cam.res), atol=1e-4)
    # the ball centre projects inside its own segmentation mask
    p = frame.state.body_pos[0, k_ball].double().numpy()
    uvw = K @ (view.reshape(-1, 4, 4)[0] @ np.append(p, 1.0))[:3]
    u, v = int(uvw[0] / uvw[2]), int(uvw[1] / uvw[2])
    assert ref.body[0, v, u] == k_ball
    # reference depth at that pixel is in front of the centre by about the radius
    z_centre = (view.reshape(-1, 4, 4)[0] @ np.append(p, 1.0))[2]
    assert 0.0 < z_centre - ref.depth[0, v, u] < 0.12


def test_contacts_reported(sim):
    sim.reset()
    sim.world.step()  # contacts are those of the last physics step
    c = sim.world.state().contacts
    assert c.valid.any(), "the resting ball touches the ground"
    k_ball = sim.world.body_slot("ball")
    pairs = {(int(a), int(b)) for a, b in zip(c.body_a[0][c.valid[0]], c.body_b[0][c.valid[0]])}
    assert any(k_ball in p for p in pairs)

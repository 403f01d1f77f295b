"""Event language at run time: triggers fire on the first step their condition holds, actions,
records, require + resampling, terminate, save/restore, per-env values.

One small layout, built once (n_envs=2); new episodes are loaded with `Simulation.reset(episodes=...)`.
"""

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from hybridsim.config import compose
from hybridsim.scenario.sampling import layout_key, sample_scenario
from hybridsim.scenario.seeding import derive_seed
from hybridsim.scenario.spec import Action, Require, Scenario

SCENE = yaml.safe_load("""
name: events_test
seed: 1
timing: {duration: 1.0, fps: 20.0, dt: 0.01, substeps: 4}
templates:
  pebble: {type: sphere, radius: 0.03, mass: 0.05, capacity: 2}
entities:
  ground: {type: plane}
  box: {type: box, size: [0.1, 0.1, 0.1], pos: [0.0, 0.0, {uniform: [0.8, 1.1]}], mass: {uniform: [0.5, 2.0]},
        held: {choice: [false, true], weights: [0.7, 0.3]}}
  ball: {type: sphere, radius: 0.1, pos: [0.8, 0.0, 0.1], density: 500.0}
  weight: {type: sphere, radius: 0.05, pos: [-0.6, 0.0, 0.4], mass: 0.5, held: true}
cameras:
  main: {pos: [2.5, -2.0, 1.6], lookat: [0.2, 0.0, 0.6], fov: 50.0, res: [64, 48]}
  sky: {pos: [0.0, 0.0, 3.0], lookat: [0.0, 5.0, 6.0], res: [32, 32]}
events:
  - {name: low, when: {height: {entity: box, below: 0.5}}}
  - {name: land, when: {contact: {a: box, b: ground, min_impulse: 0.5}}}
  - {name: drop, after: {event: low, delay: 0.05}, actions: [{kind: release, entity: weight}]}
  - {name: spawn, at: 0.1, actions: [{kind: spawn, template: pebble, count: {randint: [1, 2]}, pos: [0.3, 0.6, 0.2],
                                      offset: [0.1, 0.0, 0.0]}]}
  - {name: kick, when: {speed: {entity: ball, below: 0.01}}, once: false, max_count: 2,
     actions: [{kind: impulse, entity: ball, vector: [0.0, 0.5, 0.0]}]}
  - {name: brake, after: {event: kick, delay: 0.2}, once: false, actions: [{kind: set_velocity, entity: ball, lin_vel: [0, 0, 0],
                                                                ang_vel: [0, 0, 0]}]}
require:
  - {event: land, visible: [box], camera: main}
terminate: {at_rest: 0.15, after: land}
""")
SCENARIO = Scenario.from_dict(SCENE)


def _seeds(held: bool, n: int) -> list[int]:
    """Episode seeds whose box is (not) held, found by sampling alone."""
    out = [k for k in range(100) if sample_scenario(SCENARIO, k).entity("box").held == held]
    return out[:n]


@pytest.fixture(scope="module")
def sim():
    torch.set_num_threads(1)
    from hybridsim.pipeline import Simulation

    cfg = compose(["scenario=default", "n_envs=2", "render.enabled=false", "reference=false"])
    cfg = dataclasses.replace(cfg, scenario=SCENARIO)
    eps = [sample_scenario(SCENARIO, k) for k in _seeds(False, 2)]
    return Simulation(cfg, episodes=eps)


@pytest.fixture(scope="module")
def run(sim):
    """One recorded run: every frame, and the state after every physics step (the true trajectory)."""
    sim.reset(episodes=[sample_scenario(SCENARIO, k) for k in _seeds(False, 2)])
    world, states = sim.world, [sim.world.state()]
    step = world.step

    def recording_step():
        step()
        states.append(world.state())

    world.step = recording_step
    try:
        frames = list(sim.frames())
    finally:
        del world.step
    return frames, states, sim.event_log


def _first(log, name, env):
    return next(r for r in log if r["event"] == name and r["env"] == env)


def test_conditions_fire_on_the_first_step_they_hold(sim, run):
    frames, states, log = run
    kb, kg = sim.world.body_slot("box"), sim.world.body_slot("ground")
    for b in range(2):
        z = [float(s.body_pos[b, kb, 2]) for s in states]
        k_low = next(k for k, v in enumerate(z) if v < 0.5)  # state after k steps, seen before step k
        assert _first(log, "low", b)["step"] == k_low and _first(log, "low", b)["t"] == pytest.approx(k_low * 0.01)
        m = float(sim.world.mass("box")[b])
        k_land = None
        for k in range(1, len(states)):
            c = states[k].contacts
            pair = c.valid[b] & (((c.body_a[b] == kb) & (c.body_b[b] == kg)) | ((c.body_a[b] == kg) & (c.body_b[b] == kb)))
            dv = states[k].body_lin_vel[b, kb].double() - states[k - 1].body_lin_vel[b, kb].double()
            if pair.any() and m * float((dv - torch.tensor([0, 0, -9.81 * 0.01])).norm()) >= 0.5:
                k_land = k
                break
        rec = _first(log, "land", b)
        assert rec["step"] == k_land and rec["frame"] == k_land // 5 + 1
        assert rec["entities"] == ["box", "ground"] and 0.5 <= rec["impulse"] < 10.0


def test_records_match_what_happened(sim, run, tmp_path):
    import json

    from hybridsim.scenario.events import write_events_jsonl

    frames, states, log = run
    write_events_jsonl(tmp_path / "events.jsonl", log)
    assert [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()] == log
    kb = sim.world.body_slot("box")
    by_frame = {f.index: f.events for f in frames}
    for rec in log:  # each record is reported on the frame after its step, and only there
        assert rec in by_frame[rec["frame"]]
        assert rec["frame"] == rec["step"] // 5 + 1
    for b in range(2):
        land = _first(log, "land", b)
        box = states[land["step"]].body_pos[b, kb].double().numpy()
        p = np.array(land["contact_point"])
        assert abs(p[2]) < 0.02 and np.hypot(*(p[:2] - box[:2])) < 0.08  # under the box, on the floor
        assert land["visible"]["main"] == ["box", "ground"] and land["visible"]["sky"] == []
    assert [f.fired for f in frames if f.events][:1] == [[4]]  # kick at t = 0, on frame 1 (the v1 view)


def test_after_chains_max_count_and_actions(sim, run):
    frames, states, log = run
    kw, kball = sim.world.body_slot("weight"), sim.world.body_slot("ball")
    for b in range(2):
        kicks = [r["step"] for r in log if r["event"] == "kick" and r["env"] == b]
        brakes = [r["step"] for r in log if r["event"] == "brake" and r["env"] == b]
        assert kicks == [0, 21] and brakes == [20, 41]  # at rest again one step after each brake; max_count 2
        drop = _first(log, "drop", b)
        assert drop["step"] == _first(log, "low", b)["step"] + 5 and drop["action"] == "release"
        z = np.array([float(s.body_pos[b, kw, 2]) for s in states])
        assert np.all(z[:drop["step"] + 1] == np.float32(0.4)) and z[drop["step"] + 5] < 0.4  # held until released
        assert all(float(states[k].body_lin_vel[b, kball].norm()) < 1e-2 for k in (21, 42, 60))  # braked


def test_spawn_places_sampled_count_and_parks_the_rest(sim, run):
    frames, states, log = run
    for b in range(2):
        rec = _first(log, "spawn", b)
        n = sim.episodes[b].events[3].actions[0].count
        assert rec["spawned"] == [f"pebble_{i}" for i in range(n)] and rec["step"] == 10
        for i in range(2):
            p = states[11].body_pos[b, sim.world.body_slot(f"pebble_{i}")].double().numpy()
            if i < n:
                np.testing.assert_allclose(p[:2], [0.3 + 0.1 * i, 0.6], atol=1e-3)
            else:
                assert p[0] > 100 and sim.world.parked(f"pebble_{i}")[b]


def test_terminate_and_end_frame(sim, run):
    frames, states, log = run
    assert sim.done.all() and len(frames) < sim.n_frames  # every env came to rest before the time limit
    for b in range(2):
        assert _first(log, "land", b)["frame"] < sim.end_frame[b] < 19
        assert all(r["frame"] <= sim.end_frame[b] for r in sim.events_of(b))
    assert frames[-1].index == sim.end_frame.max()


def test_require_rejects_and_resampling_accepts(sim):
    held, free = _seeds(True, 1)[0], _seeds(False, 1)[0]
    sim.reset(episodes=[sample_scenario(SCENARIO, held), sample_scenario(SCENARIO, free)])
    list(sim.frames())
    assert sim.require_status() == ["event 'land' never fired", None]
    # the batch driver's loop: attempt k uses derive_seed(seed, "attempt", k) until the episode is accepted
    attempt, status = 0, "rejected"
    while status is not None:
        attempt += 1
        ep = sample_scenario(SCENARIO, derive_seed(held, "attempt", attempt))
        sim.reset(episodes=[ep, sample_scenario(SCENARIO, free)])
        list(sim.frames())
        status = sim.require_status()[0]
    assert attempt >= 1 and not ep.entity("box").held
    # a require on visibility: the box is never in the 'sky' camera
    eps = [dataclasses.replace(sample_scenario(SCENARIO, free), require=[Require("land", ["box"], "sky")])] * 2
    sim.reset(episodes=eps)
    list(sim.frames())
    assert sim.require_status() == ["'box' not visible in camera 'sky' when 'land' fired"] * 2


def test_save_restore_includes_event_state(sim):
    sim.reset(episodes=[sample_scenario(SCENARIO, k) for k in _seeds(False, 2)])
    for _ in range(6):
        sim.step()
    snap = sim.save()
    first = [sim.step() for _ in range(8)]  # low, land, the second kick fire in here
    sim.restore(snap)
    second = [sim.step() for _ in range(8)]
    assert sum(len(f.events) for f in first) >= 4
    for a, b in zip(first, second):
        assert torch.equal(a.state.body_pos, b.state.body_pos) and a.events == b.events and a.index == b.index


def test_per_env_gravity_mass_friction_and_camera(sim):
    from hybridsim.bridge import apply_action

    base = sample_scenario(SCENARIO, _seeds(False, 1)[0])
    moon = dataclasses.replace(base, gravity=(0.0, 0.0, -1.62))
    assert layout_key(moon) == layout_key(base)
    sim.reset(episodes=[base, moon])
    w, kb = sim.world, sim.world.body_slot("box")
    z0 = w.state().body_pos[:, kb, 2].double()
    for _ in range(20):
        w.step()
    fall = (z0 - w.state().body_pos[:, kb, 2].double()).numpy()
    np.testing.assert_allclose(fall / fall[0], [1.0, 1.62 / 9.81], rtol=0.02)
    w.set_mass("ball", np.array([1.0, 4.0]))
    before = w.state().body_lin_vel[:, w.body_slot("ball")].double().numpy()
    w.apply_impulse("ball", np.array([[2.0, 0, 0], [2.0, 0, 0]]))
    dv = w.state().body_lin_vel[:, w.body_slot("ball")].double().numpy() - before
    np.testing.assert_allclose(dv[:, 0], [2.0, 0.5], rtol=1e-4)
    w.set_friction("ball", np.array([0.2, 3.0]))
    ratio = w.scene.rigid_solver.get_geoms_friction_ratio([g.idx for g in w.entities[w.entity_index("ball")].geoms])
    np.testing.assert_allclose(ratio.reshape(2, -1)[:, 0].numpy(), [0.2, 3.0], rtol=1e-5)
    view0 = sim.cameras["main"].viewmat.copy()
    acts = [Action("move_camera", camera="main", pos=(0.0, -3.0, 1.0), lookat=(0.0, 0.0, 0.5))] * 2
    apply_action(w, acts, np.array([1]), 0.01, sim.cameras)
    assert np.array_equal(sim.cameras["main"].viewmat[0], view0[0]) and not np.allclose(sim.cameras["main"].viewmat[1],
                                                                                        view0[1])
    np.testing.assert_allclose(w.camera_pose("main")[0][1], [0.0, -3.0, 1.0])
    sim.reset()  # the episode's initial values come back: gravity, masses, frictions, cameras
    assert np.array_equal(sim.cameras["main"].viewmat, view0)
    np.testing.assert_allclose(w.gravity[1], [0, 0, -1.62]) and np.testing.assert_allclose(w.mass("ball"), w.mass("ball")[0])

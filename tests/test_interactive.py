"""Interactive use (issue 18): Gymnasium environments over the default and Franka scenarios, a refined
frame in every observation, branching bit-identical to fresh runs, recording and replay.

Tiny settings: 64x64 cameras, one-second episodes, the shipped refiner. Each environment is built
once per module (Genesis builds take ~10-20 s).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

OVR = ("scenario.timing.duration=1.0", "scenario.cameras.main.res=[64,64]")


def _franka_scenario():
    from hybridsim.config import compose
    from hybridsim.scenario.spec import Scenario

    data = compose(["scenario=franka_push", *OVR, "scenario.cameras.top.res=[64,64]"]).scenario.to_dict()
    data["actions"] = {
        "arm": {"kind": "joint_targets", "entity": "franka", "joints": [f"joint{i}" for i in range(1, 8)],
                "low": [-1.0] + [-9.0] * 6, "high": [1.0] + [9.0] * 6},  # joint1 narrowed; the rest: MJCF limits
        "nudge": {"kind": "impulse", "entity": "box", "limit": 0.05},
        "orbit": {"kind": "move_camera", "camera": "main", "limit": 0.02},
    }
    return Scenario.from_dict(data)


@pytest.fixture(scope="module")
def env():
    import hybridsim

    e = hybridsim.make_env("default", *OVR, images=("coarse", "depth", "instance"))
    yield e
    e.close()


@pytest.fixture(scope="module")
def franka():
    import hybridsim

    e = hybridsim.make_env(_franka_scenario(), render_mode="rgb_array")
    yield e
    e.close()


def test_check_env_default(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env)
    assert env.action_names == [f"{e}.impulse.{ax}" for e in ("crate", "ball", "can") for ax in "xyz"]


def test_random_episode_has_a_refined_frame_every_step(env):
    obs, info = env.reset(seed=4)
    assert info["labels"]["instance"][3] == "crate" and info["labels"]["semantic_class"][3] == "box"
    env.action_space.seed(4)
    seen, provisional, done = 0, [], False
    while not done:
        img, coarse = obs["images"]["main"], obs["coarse"]["main"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and env.observation_space.contains(obs)
        assert np.abs(img.astype(int) - coarse.astype(int)).mean() > 0.5  # refined, not the coarse render
        provisional.append(info["provisional"])
        seen += 1
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
    assert truncated and not terminated and seen == 19  # 1 s at 20 fps: frames 0..19
    assert provisional[:4] == [True, False, True, False]  # blocks of 2: every other frame is a preview
    assert set(np.unique(obs["instance"]["main"])) <= set(range(6))


def _actions(n, seed=0):  # pushes now and then, nothing in between
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, 9).astype(np.float32) * (i % 4 == 0) for i in range(n)]


def _same(a, b) -> bool:  # nested observation dicts, bit for bit
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("branch_at", [3, 8])  # inside a refiner block and at its start
def test_branch_equals_fresh_run_bit_for_bit(env, branch_at):
    acts = _actions(14)
    env.reset(seed=9)
    fresh = [env.step(a)[0] for a in acts]
    env.reset(seed=9)
    for a in acts[:branch_at]:
        env.step(a)
    state = env.save()
    for a in _actions(6, seed=1):  # another future first
        env.step(a)
    obs, _ = env.restore(state)
    assert _same(obs["images"], fresh[branch_at - 1]["images"])
    branched = [env.step(a)[0] for a in acts[branch_at:]]
    assert all(_same(f, b) for f, b in zip(fresh[branch_at:], branched))


def test_task_terms_and_callable(env):
    from hybridsim.interactive.tasks import Task

    old = env.task
    try:
        env.task = Task.of({"distance": [("crate", "ball", 2.0)], "reward": lambda ctx: 1.0})
        env.reset(seed=1)
        _, reward, *_ = env.step(np.zeros(9, np.float32))
        pos = env.session.frame.state.body_pos[0].double().numpy()
        k = env.session.sim.world
        want = 1.0 - 2.0 * np.linalg.norm(pos[k.body_slot("crate")] - pos[k.body_slot("ball")])
        assert reward == pytest.approx(want, rel=1e-6)
    finally:
        env.task = old


def test_record_and_replay_bit_identical(env, tmp_path):
    from hybridsim.interactive.recording import read_recording
    from hybridsim.interactive.replay import replay

    path = env.record(tmp_path / "session.jsonl")
    env.reset(seed=3)
    acts = _actions(7, seed=2)
    for a in acts[:3]:
        env.step(a)
    state = env.save("fork")
    for a in acts[3:]:
        env.step(a)
    env.restore(state)
    env.step(acts[5])
    env.stop_recording()
    header, ops = read_recording(path)
    assert [o["op"] for o in ops] == ["reset", "step", "step", "step", "save", "step", "step", "step", "step",
                                      "restore", "step"]
    assert header["config"]["scenario"]["name"] == "default" and all("digest" in o for o in ops if o["op"] == "step")
    import subprocess
    import sys

    # another process, through the console command: bit-identical to this one's session
    done = subprocess.run([sys.executable, "-m", "hybridsim.cli", "replay", str(path), f"out_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "bit-identical" in done.stdout, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "ok" and record["replay"]["verified"] and record["replay"]["steps"] == 8
    assert all(r["match"] for r in record["observed"]) and len(record["observed"]) == 10  # 9 frames + a restore
    assert (tmp_path / "run" / "refined_main.mp4").stat().st_size > 0
    lines = path.read_text().splitlines()  # a tampered action is caught
    k = next(i for i, line in enumerate(lines) if '"op": "step"' in line)
    row = json.loads(lines[k])
    row["actions"][0][1] = 0.25 if row["actions"][0][1] != 0.25 else -0.25
    lines[k] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    from hybridsim.interactive.errors import InteractiveError

    with pytest.raises(InteractiveError, match="differs from the recording at operation"):
        replay(path, tmp_path / "run2")


def test_check_env_franka_actions(franka):
    from gymnasium.utils.env_checker import check_env

    from hybridsim.interactive.controls import control_layout
    from hybridsim.scenario.parts import Control
    from hybridsim.scenario.spec import SpecError

    check_env(franka)
    names = franka.action_names
    assert names[:7] == [f"franka.joint{i}.target" for i in range(1, 8)]
    assert names[7:] == ["box.impulse.x", "box.impulse.y", "box.impulse.z", "main.move_camera.x",
                         "main.move_camera.y", "main.move_camera.z"]
    limits = franka.session.sim.world.joint_limits("franka")
    assert franka.action_space.low[0] == np.float32(max(-1.0, limits["joint1"][0]))
    assert franka.action_space.high[1] == np.float32(limits["joint2"][1])  # the MJCF's limit wins over 9
    obs, _ = franka.reset(seed=0)
    assert set(obs["images"]) == {"main", "top"} and obs["state"]["joint_pos"].shape == (9,)
    a = franka.action_space.sample()
    a[7:13] = [0, 0, 0, 0.02, 0, 0]
    view0 = franka.session.sim.cameras["main"].viewmat[0].copy()
    obs, *_ = franka.step(a)
    assert not np.allclose(view0, franka.session.sim.cameras["main"].viewmat[0])  # the camera moved
    assert franka.render().shape == (64, 64, 3)
    with pytest.raises(SpecError, match=r"scenario.actions.bad.joints\[0\].*no 1-dof joint 'elbow'"):
        control_layout([Control("bad", "joint_targets", entity="franka", joints=["elbow"])],
                       franka.session.sim.world)


@pytest.mark.parametrize("scenario", ["default", "franka_push"])
def test_vector_env_check_and_autoreset(scenario, tmp_path):
    import gymnasium

    import hybridsim.interactive  # noqa: F401 (registers hybridsim/<scenario>-v0)
    from hybridsim.interactive.checks import check_vector_env

    ovr = [*OVR, "scenario.timing.duration=0.3"] + (["scenario.cameras.top.res=[64,64]"]
                                                     if scenario == "franka_push" else [])
    envs = gymnasium.make_vec(f"hybridsim/{scenario}-v0", num_envs=2, vectorization_mode="vector_entry_point",
                              overrides=ovr)
    try:
        check_vector_env(envs)
        obs, _ = envs.reset(seed=7)
        frames = []
        for _ in range(7):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
            frames.append((int(info["frame"][0]), truncated.tolist(), reward.tolist()))
            assert obs["images"]["main"].shape == (2, 64, 64, 3)
        # 0.3 s = 6 frames: truncated together at frame 5, reset on the next step (NEXT_STEP)
        assert frames[4] == (5, [True, True], frames[4][2]) and frames[5] == (0, [False, False], [0.0, 0.0])
        assert not np.array_equal(obs["images"]["main"][0], obs["images"]["main"][1]) or scenario == "franka_push"
        if scenario == "default":  # env 0 ends early: it alone starts over on its next step (NEXT_STEP)
            from hybridsim.interactive.tasks import Task

            envs.unwrapped.task = Task(terminate=lambda ctx: np.array([ctx.frame.env_frame[0] >= 2, False]))
            path = envs.unwrapped.record(tmp_path / "autoreset.jsonl")
            obs0, _ = envs.reset(seed=7)
            rows, seen = [], []
            for i in range(7):
                if i == 1:
                    fork = envs.unwrapped.save("fork")
                obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 9), np.float32))
                seen.append(obs["images"]["main"].copy())
                rows.append((info["frame"].tolist(), terminated.tolist(), truncated.tolist(),
                             info["autoreset"].tolist(), info["episode"].tolist()))
                if rows[-1][3][0] and rows[-1][4][0] == 1:
                    assert reward[0] == 0
                    first_restart = {k: v[0].copy() for k, v in obs["state"].items()}
                    first_image = obs["images"]["main"][0].copy()
            assert rows == [([1, 1], [False, False], [False, False], [False, False], [0, 0]),
                            ([2, 2], [True, False], [False, False], [False, False], [0, 0]),
                            ([0, 3], [False, False], [False, False], [True, False], [1, 0]),
                            ([1, 4], [False, False], [False, False], [False, False], [1, 0]),
                            ([2, 5], [True, False], [False, True], [False, False], [1, 0]),
                            ([0, 0], [False, False], [False, False], [True, True], [2, 1]),
                            ([1, 1], [False, False], [False, False], [False, False], [2, 1])]
            # branching across an autoreset: restore, step on, bit-identical (refined images included)
            envs.unwrapped.restore(fork)
            for i in range(1, 7):
                obs, *_ = envs.step(np.zeros((2, 9), np.float32))
                assert np.array_equal(obs["images"]["main"], seen[i]), i
            envs.unwrapped.stop_recording()
            from hybridsim.interactive.recording import read_recording
            from hybridsim.interactive.replay import replay

            ops = read_recording(path)[1]
            resets = [o.get("reset") for o in ops if o["op"] == "step"]
            assert resets.count([0]) == 2 and resets.count([0, 1]) == 2  # the run and its branch
            assert replay(path, tmp_path / "replayed")["verified"]
            # env 0's second episode is the one a batch reset to episode 1 gives it (the default scenario
            # samples positions per episode), and its first refined frame matches up to float order
            u = envs.unwrapped
            u.session.reset_episode(7, 1)
            again = u.observer.batch(u.session.frame)
            assert all(np.array_equal(first_restart[k], again["state"][k][0]) for k in first_restart)
            assert not np.array_equal(first_restart["body_pos"], obs0["state"]["body_pos"][0])
            assert np.abs(first_image.astype(int) - again["images"]["main"][0]).max() <= 2
    finally:
        envs.close()

"""`hybridsim batch`: dataset read-back, episode seeds, batching independence, kill-and-resume, Ray.

One tiny scenario (tests/data/drop.yaml, 64x48, 12 frames, sparse splats); the uninterrupted reference dataset
is generated once per module and every other run is compared with it.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import hybridsim
from hybridsim.output.batch import episode_seed, shard_range
from hybridsim.output.dataset import (column_array, decode_episode, load_episodes, load_frames, load_info, load_stats,
                                      staged_episodes, verify)
from hybridsim.scenario.spec import SpecError

DATA = Path(__file__).parent / "data"
SCENARIO = str(DATA / "drop.yaml")
OVERRIDES = ["scenario.timing.duration=0.6", "refine.enabled=false", "progress=false", "render.density=2000",
             "render.plane_density=20"]
N, T = 5, 12  # episodes, frames per episode (the impulse at 0.5 s fires before frame 11)
KEYS = ["observation.images.main.coarse", "observation.images.main.reference"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A real `hybridsim batch` process, SIGKILLed by a watcher thread once 2 episodes are staged and the
    3rd is under way. Started before the reference run so that their Genesis start-ups overlap."""
    out = tmp_path_factory.mktemp("batch") / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hybridsim.cli", *_cli(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    state = {}

    def watch():
        deadline = time.monotonic() + 600
        while len(staged_episodes(out)) < 2 or not list(out.glob("sidecar/.tmp-*")):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                state["error"] = f"exited {proc.poll()} before the kill: {proc.stderr.read()[-2000:]}"
                return
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state["staged"] = staged_episodes(out)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield out, watcher, state
    proc.kill()


@pytest.fixture(scope="module")
def ref(killed, tmp_path_factory):
    """The uninterrupted run: N episodes, one env per scene."""
    out = tmp_path_factory.mktemp("batch") / "ref"
    res = hybridsim.generate(SCENARIO, episodes=N, overrides=OVERRIDES, out_dir=out)
    assert res.generated == N and res.merged
    assert res.timings["builds"] == 1, "one Genesis build, reused for every batch"
    return out


def _cli(out: Path, *extra: str) -> list[str]:
    return ["batch", f"scenario={SCENARIO}", f"episodes={N}", f"out_dir={out}", *OVERRIDES, *extra]


def _same_episodes(a: Path, b: Path, episodes) -> None:
    """Data rows, episode rows and decoded video frames of `episodes` are identical in a and b."""
    for i in episodes:
        assert load_frames(a, i).equals(load_frames(b, i)), f"episode {i}: data rows differ"
        for key in KEYS:
            np.testing.assert_array_equal(decode_episode(a, key, i), decode_episode(b, key, i), err_msg=f"{key} ep {i}")
    ea, eb = load_episodes(a).to_pylist(), load_episodes(b).to_pylist()
    for i in episodes:
        assert ea[i] == eb[i], f"episode {i}: meta/episodes rows differ"


def test_dataset_reads_back_consistently(ref):
    verify(ref)  # info.json, episode index, data rows, stats and decoded video frame counts agree
    info, eps, data = load_info(ref), load_episodes(ref).to_pylist(), load_frames(ref)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == N and info["total_frames"] == N * T == data.num_rows
    assert set(KEYS) <= set(info["features"]) and info["features"][KEYS[0]]["shape"] == [48, 64, 3]
    assert info["features"]["observation.state"]["shape"] == [3 * 7]
    assert [e["dataset_from_index"] for e in eps] == [T * i for i in range(N)]
    K = column_array(data, "observation.cameras.main.intrinsics")[0].reshape(3, 3)
    assert (K[0, 2], K[1, 2]) == (32.0, 24.0)
    view = column_array(data, "observation.cameras.main.extrinsics")[0].reshape(4, 4)
    np.testing.assert_allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3), atol=1e-5)
    stats = load_stats(ref)
    state = column_array(data, "observation.state")
    np.testing.assert_allclose(stats["observation.state"]["max"], state.max(0))
    assert stats[KEYS[0]]["count"] == [N * T]
    for i in (0, N - 1):
        for key in KEYS:
            assert decode_episode(ref, key, i).shape == (T, 48, 64, 3)
    side = ref / "sidecar" / "episode_000003"
    meta = json.loads((side / "episode.json").read_text())
    assert meta["seed"] == episode_seed(7, 3) and meta["attempts"][0]["status"] == "accepted"
    assert len(list((side / "labels" / "main").glob("*.npz"))) == T
    assert set(np.load(side / "labels/main/000005.npz")) == {"depth", "instance", "alpha", "forward_flow",
                                                             "backward_flow", "normals"}
    events = [json.loads(line) for line in (side / "events.jsonl").read_text().splitlines()]
    assert [(e["action"], e["frame"]) for e in events] == [("impulse", 11)]  # fired at t = 0.5 s
    z = state[::T, 7 + 2]  # box height at frame 0 of each episode: jittered x/y only
    assert np.allclose(z, 3.0) and len(set(state[::T, 7].round(6))) == N, "episodes get their own seeds"


def test_lerobot_06_keys_action_and_provenance(ref):
    """What LeRobot 0.6 reads without warnings (scripts/lerobot_roundtrip.py checks it with the real client)."""
    info, stats = load_info(ref), load_stats(ref)
    assert "hybridsim" not in info and isinstance(info["fps"], int)
    prov = json.loads((ref / "meta/hybridsim.json").read_text())
    assert prov["scenario"] == "drop" and prov["sidecar"] == "sidecar/episode_{episode_index:06d}"
    vinfo = info["features"][KEYS[0]]["info"]
    assert vinfo["is_depth_map"] is False and "video.is_depth_map" not in vinfo
    assert (vinfo["video.codec"], vinfo["video.g"], vinfo["video.fps"]) == ("h264", 2, 20)
    for name, s in stats.items():
        assert {"q01", "q10", "q50", "q90", "q99"} <= set(s), name
    eps = load_episodes(ref).to_pylist()
    assert f"stats/{KEYS[0]}/q50" in eps[0] and np.asarray(eps[0][f"stats/{KEYS[0]}/q99"]).shape == (3, 1, 1)
    # action: the declared impulse on the ball (0, 1, 0) N*s at t = 0.5 s, i.e. in the interval from frame 10 to 11
    assert info["features"]["action"]["names"] == ["ball.impulse.x", "ball.impulse.y", "ball.impulse.z"]
    act = column_array(load_frames(ref, 3), "action")
    want = np.zeros((T, 3), np.float32)
    want[10, 1] = 1.0
    np.testing.assert_array_equal(act, want)


def test_flow_at_an_episodes_first_frame_is_zero(ref):
    """Issue 17: frame 0 of a later episode of a batch carried flow left over from the previous episode."""
    for i in range(N):
        side = ref / "sidecar" / f"episode_{i:06d}" / "labels" / "main"
        first, last = np.load(side / "000000.npz"), np.load(side / f"{T - 1:06d}.npz")
        assert not first["backward_flow"].any() and not last["forward_flow"].any(), i
        assert np.abs(last["backward_flow"].astype(np.float32)).max() > 0.1  # the pushed ball moves: real flow


def test_objects_table_and_coco_export(ref, tmp_path, capsys):
    from hybridsim.cli import main

    rows = pq.read_table(ref / "sidecar/episode_000001/labels/objects.parquet").to_pylist()
    assert len(rows) == T * 3  # frames x instances (ground, box, ball), one camera
    ball = [r for r in rows if r["entity"] == "ball" and r["frame_index"] == 5][0]
    assert (ball["sx"], ball["sy"], ball["sz"]) == pytest.approx((0.2, 0.2, 0.2), abs=1e-4)
    assert (ball["cx"], ball["cy"], ball["cz"]) == pytest.approx((0.6, 0.0, 0.1), abs=2e-3)
    assert ball["x_min"] <= ball["center_u"] <= ball["x_max"] and ball["y_min"] <= ball["center_v"] <= ball["y_max"]
    assert 0.0 < ball["visible_fraction"] <= 1.0
    pycocotools = pytest.importorskip("pycocotools.coco")
    assert main(["export", "coco", f"dataset={ref}", f"out={tmp_path / 'coco.json'}"]) == 0
    assert "annotations" in capsys.readouterr().out
    coco = pycocotools.COCO(str(tmp_path / "coco.json"))
    assert len(coco.getImgIds()) == N * T
    for ann in coco.loadAnns(coco.getAnnIds())[::7]:
        img = coco.loadImgs(ann["image_id"])[0]
        inst = np.load(ref / f"sidecar/episode_{img['episode_index']:06d}/labels/main/{img['frame_index']:06d}.npz")
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), inst["instance"] == ann["instance_id"])
        x, y, w, h = ann["bbox"]
        m = coco.annToMask(ann)
        assert m[:, x:x + w].sum() == m.sum() and m[y:y + h].sum() == m.sum() and m.sum() == ann["area"]


def test_franka_action_is_its_joint_targets(tmp_path):
    """`hybridsim batch scenario=franka_push`: action = the Franka's 9 joint targets on every frame."""
    from hybridsim.config import compose

    res = hybridsim.generate("franka_push", episodes=1, out_dir=tmp_path / "franka", labels=False,
                             overrides=["scenario.timing.duration=0.6", "refine.enabled=false", "render.enabled=false",
                                        "reference=none", "progress=false"])
    info, act = load_info(res.out_dir), column_array(load_frames(res.out_dir), "action")
    joints = compose(["scenario=franka_push"]).scenario.entities
    targets = next(e for e in joints if e.name == "franka").joints
    assert info["features"]["action"]["names"][:7] == [f"franka.joint{i}.target" for i in range(1, 8)]
    assert act.shape == (12, 9) and info["robot_type"] == "franka"
    start = np.array([targets[n.split(".")[1]] for n in info["features"]["action"]["names"]], np.float32)
    np.testing.assert_allclose(act[:10], np.tile(start, (10, 1)), atol=1e-6)  # the initial targets
    moved = start.copy()
    moved[0] = 0.8  # the event at t = 0.5 s (step 50, interval 10 -> 11) sets joint1 to 0.8
    np.testing.assert_allclose(act[10:], np.tile(moved, (2, 1)), atol=1e-6)


def test_episode_alone_equals_episode_in_batch_and_run(ref, tmp_path):
    """Episode 2 in a batch of 4 envs, alone (n_envs=1) and from `hybridsim run episode=2`: same poses."""
    batched = tmp_path / "b4"
    hybridsim.generate(SCENARIO, episodes=4, overrides=OVERRIDES, out_dir=batched, n_envs=4, labels=False)
    alone = column_array(load_frames(ref, 2), "observation.state")
    in_batch = column_array(load_frames(batched, 2), "observation.state")
    np.testing.assert_allclose(in_batch, alone, atol=1e-6, rtol=0)
    for i in range(4):  # every slot of the batch, not just one
        np.testing.assert_allclose(column_array(load_frames(batched, i), "observation.state"),
                                   column_array(load_frames(ref, i), "observation.state"), atol=1e-6, rtol=0)
    run = hybridsim.run(SCENARIO, OVERRIDES + ["render.enabled=false", "reference=false"], episode=2,
                        out_dir=tmp_path / "run2")
    rows = pq.read_table(run.out_dir / "poses.parquet").to_pylist()
    pos = np.array([[r["px"], r["py"], r["pz"]] for r in rows]).reshape(T, 3, 3)
    np.testing.assert_allclose(pos, alone.reshape(T, 3, 7)[..., :3], atol=1e-6, rtol=0)


def test_killed_batch_resumes_to_the_same_dataset(killed, ref, capsys):
    """A batch SIGKILLed mid-episode, re-run with the same command, equals the uninterrupted run.
    (The re-run goes through the CLI's main() in this process to skip a second Genesis start-up.)"""
    from hybridsim.cli import main

    out, watcher, state = killed
    watcher.join(timeout=600)
    assert "error" not in state, state.get("error")
    staged = state["staged"]
    assert 2 <= len(staged) < N, f"kill came too late: {sorted(staged)}"
    assert list(out.glob("sidecar/.tmp-*")), "the cut-off episode left partial files"
    assert not (out / "meta").exists()
    assert main(_cli(out)) == 0
    assert f"({N - len(staged)} generated, {len(staged)} already there)" in capsys.readouterr().out
    assert not list(out.glob("sidecar/.tmp-*")), "the partial episode was discarded"
    verify(out)
    assert load_info(out) == load_info(ref) and load_stats(out) == load_stats(ref)
    assert load_frames(out).equals(load_frames(ref))
    _same_episodes(out, ref, range(N))


def test_ray_two_workers_match_local(ref, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    res = hybridsim.generate(SCENARIO, episodes=4, overrides=OVERRIDES, out_dir=out, launcher="ray", workers=2)
    assert res.merged and res.generated == 4 and len(res.timings["shards"]) == 2
    assert sorted(i for s in res.timings["shards"] for i in s["indices"]) == [0, 1, 2, 3]
    verify(out)
    _same_episodes(out, ref, range(4))


def test_bad_options_fail_with_one_clear_line(ref, tmp_path, capsys):
    from hybridsim.cli import main

    with pytest.raises(SpecError, match="episodes: must be an integer >= 1"):
        hybridsim.generate(SCENARIO, episodes=0)
    with pytest.raises(SpecError, match="n_envs: must be >= 1"):
        hybridsim.generate(SCENARIO, episodes=2, n_envs=0)
    with pytest.raises(SpecError, match="launcher"):
        hybridsim.generate(SCENARIO, episodes=2, launcher="slurm")
    assert main(["batch", f"scenario={SCENARIO}", f"out_dir={ref}", "episodes=5", *OVERRIDES, "scenario.seed=8"]) == 2
    err = capsys.readouterr().err
    assert "holds a dataset of scenario 'drop' made with another config" in err and "scenario.seed" in err
    assert "overwrite=true" in err and err.count("\n") == 1
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(SpecError, match="holds no hybridsim dataset"):
        hybridsim.generate(SCENARIO, episodes=1, out_dir=tmp_path)


def test_shards_and_merge_command(ref, tmp_path, capsys):
    from hybridsim.cli import main

    assert [list(shard_range(10, f"{i}/3")) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(SpecError, match="shard"):
        shard_range(10, "3/3")
    before = {p: p.read_bytes() for p in sorted((ref / "data").rglob("*.parquet"))}
    assert main(["batch", "merge", f"out_dir={ref}"]) == 0  # the SLURM merge step: rebuilds the same files
    assert f"merged {N} episodes" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in sorted((ref / "data").rglob("*.parquet"))} == before
    verify(ref)


class _FakePool:
    """Stands in for batch._SimPool: a Simulation with the coming batched API (per-env episode ends
    via done / end_frame, require_status) without Genesis. Episode i lasts 3 + i frames; episode 1 is
    rejected on attempts 0 and 1; episode `always` is always rejected."""

    always = -1

    def __init__(self, cfg, base):
        self.cfg, self.timings, self.key = cfg, {}, None

    def load(self, batch):
        from types import SimpleNamespace

        from hybridsim.pipeline import CameraParams

        B, self.key = self.cfg.n_envs, batch[0].key
        self.batch = batch + [batch[-1]] * (B - len(batch))
        cams = {"main": CameraParams("main", 64, 48, np.tile(np.eye(4), (B, 1, 1)), np.tile(np.eye(3), (B, 1, 1)))}
        bodies = [SimpleNamespace(entity="box", link="base")]
        self.sim = SimpleNamespace(cfg=self.cfg, scenario=self.cfg.scenario, cameras=cams, splats=None,
                                   episodes=[t.scenario for t in self.batch], steps_per_frame=5,
                                   seeds=[t.seed for t in self.batch],
                                   world=SimpleNamespace(bodies=bodies), done=np.zeros(B, bool),
                                   end_frame=np.array([2 + t.index for t in self.batch]),
                                   require_status=self._status)
        return self.sim

    def _status(self):
        return [f"no impact (attempt {t.attempt})" if (t.index == 1 and t.attempt < 2) or t.index == self.always
                else None for t in self.batch]

    def frames(self, tap=None):
        import torch
        from types import SimpleNamespace

        from hybridsim.pipeline import Frame

        B = len(self.batch)
        for f in range(int(self.sim.end_frame.max()) + 1):
            pos = torch.tensor([[[t.seed % 1000 / 1000, t.index, f]] for t in self.batch], dtype=torch.float32)
            state = SimpleNamespace(body_pos=pos, body_quat=torch.zeros(B, 1, 4))
            self.sim.done = f >= self.sim.end_frame
            frame = Frame(f, f / 20, state, self.sim.cameras)
            yield tap(frame) if tap else frame


def test_rejected_episodes_are_resampled_and_short_envs_stop(tmp_path, monkeypatch):
    import hybridsim.output.batch as batch

    monkeypatch.setattr(batch, "_SimPool", _FakePool)
    res = hybridsim.generate(SCENARIO, episodes=4, overrides=OVERRIDES, out_dir=tmp_path / "ds", n_envs=2)
    assert res.generated == 4 and res.merged
    verify(res.out_dir)
    eps = load_episodes(res.out_dir).to_pylist()
    assert [e["length"] for e in eps] == [3, 4, 5, 6]  # each env's own episode end
    meta = json.loads((res.out_dir / "sidecar/episode_000001/episode.json").read_text())
    assert [a["seed"] for a in meta["attempts"]] == [episode_seed(7, 1, k) for k in range(3)]
    assert [a["status"] for a in meta["attempts"]] == ["no impact (attempt 0)", "no impact (attempt 1)", "accepted"]
    assert meta["seed"] == episode_seed(7, 1, 2)
    state = column_array(load_frames(res.out_dir, 1), "observation.state")
    assert np.allclose(state[:, 0], episode_seed(7, 1, 2) % 1000 / 1000)  # the accepted attempt's data
    monkeypatch.setattr(_FakePool, "always", 2)
    with pytest.raises(batch.DatasetError, match="episode 2 was rejected 3 times .*raise max_attempts"):
        hybridsim.generate(SCENARIO, episodes=4, overrides=OVERRIDES, out_dir=tmp_path / "ds2", max_attempts=3)
    assert staged_episodes(tmp_path / "ds2") == {0, 1}  # finished episodes stay staged for a re-run

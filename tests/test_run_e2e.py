"""End-to-end: `hybridsim run` on the CLI and `hybridsim.run` from Python write a complete run folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hybridsim

from hybridsim.output.writers import read_video as _decode

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cmd = [sys.executable, "-m", "hybridsim.cli", "run", f"scenario={DATA / 'drop.yaml'}", f"out_dir={out}",
           "n_envs=2", "scenario.timing.duration=0.5", "refine.enabled=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_cli_writes_run_folder(cli_run):
    out, r = cli_run
    assert "wrote 10 frames x 2 env(s)" in r.stdout
    # drop.yaml's impulse at 0.5 s is past the last step of a 0.5 s run: said once, not silently skipped
    assert "warning: scenario.events[0] ('event0', at=0.5 s)" in r.stderr and "will not fire" in r.stderr
    assert not list(out.glob("*.partial")) and (out / ".hybridsim-run").is_file()
    for env in (0, 1):
        frames = _decode(out / f"reference_main_env{env}.mp4")
        assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    assert (out / "config.yaml").is_file()


def test_poses_and_cameras_tables(cli_run):
    import pyarrow.parquet as pq

    out, _ = cli_run
    poses = pq.read_table(out / "poses.parquet")
    assert poses.num_rows == 10 * 2 * 3  # frames x envs x bodies
    assert {"frame", "t", "env", "entity", "px", "py", "pz", "qw", "qx", "qy", "qz", "instance_id"} <= set(
        poses.column_names)
    cams = pq.read_table(out / "cameras.parquet").to_pylist()
    assert len(cams) == 10 * 2
    K = np.array(cams[0]["K"]).reshape(3, 3)
    assert K[0, 2] == 32.0 and K[1, 2] == 24.0
    view = np.array(cams[0]["viewmat"]).reshape(4, 4)
    np.testing.assert_allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3), atol=1e-6)


def test_run_json_records_provenance(cli_run):
    out, _ = cli_run
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "ok" and rec["frames"] == 10 and rec["n_frames"] == 10
    assert len(rec["warnings"]) == 1 and rec["pid"] > 0
    assert rec["seeds"]["root"] == 7 and len(rec["seeds"]["envs"]) == 2
    assert rec["versions"]["genesis-world"].startswith("1.4")
    assert rec["timings"]["total_s"] > 0 and "physics_s" in rec["timings"]
    assert rec["config"]["scenario"]["entities"]["box"]["mass"] == 1.0


def test_refuses_to_overwrite(cli_run, capsys):
    from hybridsim.cli import main

    out, _ = cli_run
    assert main(["run", f"scenario={DATA / 'drop.yaml'}", f"out_dir={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_python_api_franka_follows_joint_targets(tmp_path):
    """The Franka that Genesis ships builds, holds its initial pose and follows a joint target."""
    res = hybridsim.run("franka_push", ["scenario.timing.duration=1.5", "refine.enabled=false",
                                        "render.enabled=false"],
                        out_dir=tmp_path / "franka", reference=False, progress=False)
    assert res.status == "ok" and res.n_frames == 30
    import pyarrow.parquet as pq

    rows = pq.read_table(res.out_dir / "poses.parquet").to_pylist()
    hand = [r for r in rows if r["link"] == "hand"]
    start, end = hand[0], hand[-1]
    # joint1 swings from -0.8 to +0.8 rad: the hand crosses from y < 0 to y > 0
    assert start["py"] < -0.3 and end["py"] > 0.1
    box = [r for r in rows if r["entity"] == "box"]
    moved = np.hypot(box[-1]["px"] - box[0]["px"], box[-1]["py"] - box[0]["py"])
    assert moved > 0.05, "the sweep pushes the box"


def test_frame_generator_matches_run(tmp_path):
    frames = list(hybridsim.frames(str(DATA / "drop.yaml"), ["scenario.timing.duration=0.25", "refine.enabled=false",
                                                              "render.enabled=false", "reference=false"]))
    assert [f.index for f in frames] == list(range(5))
    assert frames[0].state.body_pos.shape == (1, 3, 3)

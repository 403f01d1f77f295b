"""Reliability and data safety (docs/reliability.md): every bad input fails fast with one line, exit
code 2 and no traceback, before Genesis or a model loads; nothing the project did not write is ever
deleted; a killed run keeps its finished frames.

Most checks call the CLI's `main` in this process with the Genesis build replaced by a tripwire,
so a check that fires too late fails loudly instead of starting a 20 s build; a few run the console
script in a subprocess, the way a user meets them. Three tests (marked slow) run real episodes:
SIGKILL, SIGINT and a physics blow-up caused by an event.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hybridsim.cli import main

DATA = Path(__file__).parent / "data"
DROP = DATA / "drop.yaml"
FAST_S = 15.0  # "a few seconds", with room for a loaded 2-core machine


@pytest.fixture(autouse=True)
def no_genesis(monkeypatch):
    """Any check that would only fire after the Genesis build fails this test instead."""
    import hybridsim.pipeline

    def tripwire(self, *args, **kwargs):
        raise AssertionError("the Genesis build started: this input must be refused before it")

    monkeypatch.setattr(hybridsim.pipeline.Simulation, "__init__", tripwire)


def refused(capsys, *args: str, option: str, fix: str | None = None, never: tuple[str, ...] = ()) -> str:
    """Run `hybridsim run ARGS` in-process: exit 2, one line naming `option` (and `fix`), fast."""
    t0 = time.perf_counter()
    code = main(["run", *args])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hybridsim: error: "), err
    assert option in lines[0], lines[0]
    if fix is not None:
        assert fix in lines[0], lines[0]
    for text in never:
        assert text not in err
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    return lines[0]


def cli(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridsim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def scenario_file(tmp_path: Path, name: str = "scene.yaml", **changes) -> Path:
    data = yaml.safe_load(DROP.read_text())
    data.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------- scenario files


def test_untrusted_scenario_files_are_refused_in_one_line(tmp_path, capsys):
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    refused(capsys, f"scenario={binary}", option="scenario", fix="binary")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    line = refused(capsys, f"scenario={listed}", option="scenario", fix="not a scenario file")
    assert "override" not in line  # nobody gave one
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nentities: {box: [1, 2\n")
    refused(capsys, f"scenario={broken}", option="scenario", fix="line 3")
    secret = "a-private-line-that-must-never-be-echoed " * 40
    text = tmp_path / "notes.yaml"
    text.write_text(secret)
    refused(capsys, f"scenario={text}", option="scenario", fix="not a scenario file", never=("private-line",))
    env = tmp_path / "env.yaml"
    env.write_text("name: ${oc.env:HOME}\ncameras: {}\n")
    refused(capsys, f"scenario={env}", option="scenario.name", fix="interpolation", never=(str(Path.home()) + "'",))
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(f"name: x\n{secret.strip()}: 1\n")
    refused(capsys, f"scenario={keyed}", option="scenario", never=(secret[:200],))


def test_etc_passwd_is_not_echoed(capsys):
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    refused(capsys, "scenario=/etc/passwd", option="scenario", fix="not a scenario file", never=("root:", "/bin/"))


def test_yaml_alias_bomb_is_refused_before_it_grows(tmp_path, capsys):
    lines = ['name: bomb', 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):  # 9**10 values once expanded
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    refused(capsys, f"scenario={bomb}", option="scenario", fix="aliases")
    loop = tmp_path / "loop.yaml"
    loop.write_text("name: &a [x, *a]\n")
    refused(capsys, f"scenario={loop}", option="scenario", fix="alias")


def test_mesh_and_texture_files_are_checked_by_content(tmp_path, capsys):
    junk = tmp_path / "junk.obj"
    junk.write_bytes(os.urandom(4096))
    entities = yaml.safe_load(DROP.read_text())["entities"]
    scene = scenario_file(tmp_path, entities={**entities, "thing": {"type": "mesh", "file": "junk.obj",
                                                                      "pos": [0.0, 0.5, 0.5]}})
    refused(capsys, f"scenario={scene}", f"out_dir={tmp_path / 'out'}", option="scenario.entities.thing.file",
            fix="junk.obj")
    (tmp_path / "tex.png").write_text("this is not an image\n")
    box = {**entities["box"], "appearance": {"texture": "tex.png"}}
    scene = scenario_file(tmp_path, "tex.yaml", entities={**entities, "box": box})
    refused(capsys, f"scenario={scene}", option="scenario.entities.box.appearance.texture", fix="not a readable image")
    assert not (tmp_path / "out").exists()


def test_files_next_to_the_yaml_are_found_with_distributions(tmp_path, monkeypatch):
    """Sampling validates each episode again; it must find files beside the YAML from any cwd."""
    import PIL.Image

    from hybridsim.config import compose
    from hybridsim.scenario.sampling import sample_scenario

    folder = tmp_path / "scenes"
    folder.mkdir()
    (folder / "tet.obj").write_text("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0 0 0.1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    PIL.Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "grey.png")
    entities = yaml.safe_load(DROP.read_text())["entities"]
    entities["tet"] = {"type": "mesh", "file": "tet.obj", "pos": [0.0, 0.5, 0.3], "pos_jitter": 0.05,
                       "appearance": {"texture": {"choice": ["grey.png", "skimage:brick"]}}}
    scene = scenario_file(folder, entities=entities)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = compose([f"scenario={scene}"])
    for seed in range(4):
        episode = sample_scenario(cfg.scenario, seed)
        tet = episode.entity("tet")
        assert Path(tet.file).is_absolute() and Path(tet.file).is_file()
        assert tet.appearance.texture in (str(folder / "grey.png"), "skimage:brick")


# ---------------------------------------------------------------------------- options


def test_options_are_refused_before_anything_heavy(tmp_path, capsys):
    out = tmp_path / "never"
    base = [f"scenario={DROP}", f"out_dir={out}"]
    refused(capsys, *base, "refine.device=bogus", option="refine.device", fix="use auto, cpu")
    refused(capsys, *base, "refine.noise=loud", option="refine.noise", fix="static")
    refused(capsys, *base, "refine.sigmas=[2.0, 0.5]", option="refine.sigmas", fix="strictly decreasing")
    refused(capsys, *base, "refine.steps=0", option="refine.steps", fix="> 0")
    refused(capsys, *base, f"refine.weights={DROP}", option="refine.weights", fix="is not a folder (it is a file)")
    refused(capsys, *base, f"refine.weights={tmp_path / 'missing'}", option="refine.weights", fix="it does not exist")
    refused(capsys, f"scenario={DROP}", "scenario.name=../../etc", option="scenario.name", fix="folder name")
    refused(capsys, *base, "n_envs=100000", option="n_envs", fix="hybridsim batch")
    refused(capsys, *base, "refine.enabled=false", "n_envs=2", "render.max_gaussians=1000000000",
            option="n_envs", fix="GiB")
    import torch

    if not torch.cuda.is_available():
        refused(capsys, *base, "render.backend=gsplat", option="render.backend", fix="render.backend=auto")
        refused(capsys, *base, "refine.device=cuda", option="refine.device", fix="CUDA is not available")
    assert not out.exists()


def test_out_dir_that_is_a_file_or_not_writable(tmp_path, capsys):
    f = tmp_path / "plain.txt"
    f.write_text("keep me\n")
    refused(capsys, f"scenario={DROP}", f"out_dir={f}", "refine.enabled=false", option="out_dir", fix="is a file")
    refused(capsys, f"scenario={DROP}", f"out_dir={f / 'run'}", "refine.enabled=false", option="out_dir",
            fix="choose a writable folder")
    assert f.read_text() == "keep me\n"


def test_events_after_the_end_are_reported(tmp_path):
    from hybridsim.config import compose
    from hybridsim.scenario.spec import events_after_end

    late = events_after_end(compose([f"scenario={DROP}", "scenario.timing.duration=0.5"]).scenario)
    assert len(late) == 1 and "scenario.events[0]" in late[0] and "at=0.5 s" in late[0]
    assert "raise scenario.timing.duration above 0.5" in late[0]
    assert events_after_end(compose([f"scenario={DROP}", "scenario.timing.duration=0.6"]).scenario) == []
    chained = scenario_file(tmp_path, events=[
        {"at": 0.1, "kind": "impulse", "entity": "ball", "vector": [0, 0, 1]},
        {"after": {"event": "event0", "delay": 0.6}, "actions": [{"kind": "release", "entity": "box"}]},
        {"at": {"uniform": [0.7, 0.9]}, "kind": "impulse", "entity": "ball", "vector": [0, 0, 1]}])
    late = events_after_end(compose([f"scenario={chained}", "scenario.timing.duration=0.6"]).scenario)
    assert [line.split(" ")[0] for line in late] == ["scenario.events[1]", "scenario.events[2]"]


# ---------------------------------------------------------------------------- weights folders


def _safetensors(path: Path, tensors: dict | None = None) -> None:
    """A safetensors file whose header describes `tensors` (name -> shape) of zero floats."""
    header, offset = {"__metadata__": {}}, 0
    for name, shape in (tensors or {}).items():
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def weights(tmp_path: Path, name: str = "w", sampler=None, **config) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "CausalWanRefiner", "num_layers": 1, **config}))
    _safetensors(folder / "diffusion_pytorch_model.safetensors")
    if sampler is not None:
        (folder / "sampler.json").write_text(sampler if isinstance(sampler, str) else json.dumps(sampler))
    return folder


def test_weights_folders_are_checked_before_any_model_loads(tmp_path, capsys):
    base = [f"scenario={DROP}", f"out_dir={tmp_path / 'never'}"]
    huge = weights(tmp_path, "huge", num_layers=100000, num_attention_heads=64, attention_head_dim=128, ffn_dim=32768)
    refused(capsys, *base, f"refine.weights={huge}", option="refine.weights", fix="use a smaller model")
    bad = weights(tmp_path, "bad", window_frames=0)
    refused(capsys, *base, f"refine.weights={bad}", option="refine.weights", fix="window_frames=0")
    typed = weights(tmp_path, "typed", num_layers="four")
    refused(capsys, *base, f"refine.weights={typed}", option="refine.weights", fix="num_layers must be int")
    odd = weights(tmp_path, "odd", mystery=1)
    refused(capsys, *base, f"refine.weights={odd}", option="refine.weights", fix="unknown keys")
    patch = weights(tmp_path, "patch", patch_size=32, sample_height=64, sample_width=64)
    refused(capsys, *base, f"refine.weights={patch}", option="scenario.cameras.main.res", fix="patch size 32")
    lit = weights(tmp_path, "lit", cond_channels=21)
    refused(capsys, *base, f"refine.weights={lit}", "render.lit=false", option="render.lit", fix="render.lit=true")
    for i, sampler in enumerate(("{not json", {"steps": 3}, {"num_steps": "three"}, {"sigmas": [2.0]})):
        folder = weights(tmp_path, f"s{i}", sampler=sampler)
        refused(capsys, *base, f"refine.weights={folder}", option="refine.weights", fix="sampler")
    garbled = weights(tmp_path, "garbled")
    (garbled / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    refused(capsys, *base, f"refine.weights={garbled}", option="refine.weights", fix="not safetensors")
    big = weights(tmp_path, "bigjson")
    (big / "config.json").write_text(json.dumps({"_class_name": "CausalWanRefiner", "pad": "x" * (2 << 20)}))
    refused(capsys, *base, f"refine.weights={big}", option="refine.weights", fix="limit", never=("xxxxxxxx",))


def test_wan_shard_names_stay_inside_the_weights_folder(tmp_path, capsys):
    from refine import RefineError
    from refine.wan import load_wan_checkpoint

    secret = tmp_path / "outside.safetensors"
    _safetensors(secret, {"patch_embedding.weight": (24, 5, 1, 2, 2)})
    for i, name in enumerate(("../outside.safetensors", str(secret), "sub/../../outside.safetensors")):
        folder = tmp_path / f"wan{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 2,
            "attention_head_dim": 12, "in_channels": 5, "out_channels": 3, "freq_dim": 16, "ffn_dim": 32,
            "num_layers": 2}))
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"patch_embedding.weight": name}}))
        with pytest.raises(RefineError, match="not a file directly inside the weights folder"):
            load_wan_checkpoint(folder)
        refused(capsys, f"scenario={DROP}", f"refine.weights={folder}", option="refine.weights",
                fix="plain file names")


def test_huge_model_config_is_refused_before_allocation(tmp_path):
    from refine import RefineError
    from refine.model import CausalWanRefiner

    folder = weights(tmp_path, "huge", num_layers=100000, num_attention_heads=64, attention_head_dim=128,
                     ffn_dim=32768)
    t0 = time.perf_counter()
    with pytest.raises(RefineError, match="GiB"):
        CausalWanRefiner.from_pretrained(folder)
    assert time.perf_counter() - t0 < FAST_S


# ---------------------------------------------------------------------------- run folders


def test_overwrite_never_deletes_a_folder_hybridsim_did_not_write(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "notes.txt").write_text("my notes\n")
    (home / "config.yaml").write_text("mine: true\n")  # a name a run writes, in a folder it did not
    for extra in ([], ["refine.enabled=false"]):
        refused(capsys, f"scenario={DROP}", f"out_dir={home}", "overwrite=true", *extra, option="out_dir",
                fix="not a hybridsim run folder")
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", "config.yaml", "notes.txt"]
    # a run folder the user added a file to: the run's files are not deleted either
    run = tmp_path / "run"
    run.mkdir()
    for name in (".hybridsim-run", "run.json", "coarse_main.mp4", "poses.parquet"):
        (run / name).write_text("{}" if name.endswith(("json", "run")) else "x")
    (run / "analysis.ipynb").write_text("{}")
    refused(capsys, f"scenario={DROP}", f"out_dir={run}", "overwrite=true", option="out_dir", fix="did not write")
    assert len(list(run.iterdir())) == 5


def test_overwrite_replaces_only_run_files(tmp_path):
    from hybridsim.output.rundir import MARKER, claim_run_dir

    out = tmp_path / "run"
    claim_run_dir(out, overwrite=False)
    assert (out / MARKER).is_file()
    (out / "run.json").write_text(json.dumps({"status": "ok", "frames": 3}))
    for name in ("config.yaml", "events.jsonl", "coarse_main.mp4", "poses.parquet.partial"):
        (out / name).write_text("x")
    (out / "labels" / "main" / "env0").mkdir(parents=True)
    (out / "labels" / "main" / "env0" / "000000.npz").write_bytes(b"x")
    with pytest.raises(Exception, match="overwrite=true"):
        claim_run_dir(out, overwrite=False)
    claim_run_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_rerun_on_a_killed_runs_folder_says_so(tmp_path, capsys):
    from hybridsim.output.rundir import claim_run_dir

    out = tmp_path / "killed"
    claim_run_dir(out, overwrite=False)
    (out / "run.json").write_text(json.dumps({"status": "running", "frames": 21, "pid": 2**22 + 17,
                                              "host": os.uname().nodename, "config": {}}))
    (out / "coarse_main.mp4").write_bytes(b"x")
    refused(capsys, f"scenario={DROP}", f"out_dir={out}", option="out_dir", fix="killed after 21 finished frame(s)")
    # failed before its first frame: nothing to keep, so it does not block a re-run
    (out / "run.json").write_text(json.dumps({"status": "failed", "frames": 0, "config": {}}))
    claim_run_dir(out, overwrite=False)


def test_console_script_refusals_are_one_line(tmp_path):
    """The real process: exit code 2, one line, no traceback (a sample of the kinds above)."""
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(os.urandom(2048) + b"\x00")
    for args, option in (([f"scenario={binary}"], "scenario"),
                         ([f"scenario={DROP}", "refine.device=bogus"], "refine.device"),
                         ([f"scenario={DROP}", f"out_dir={DROP}"], "out_dir")):
        t0 = time.perf_counter()
        r = cli("run", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and option in r.stderr
        assert time.perf_counter() - t0 < FAST_S


# ---------------------------------------------------------------------------- real runs (Genesis)


def _wait_for_frames(proc: subprocess.Popen, labels: Path, n: int, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while len(list(labels.glob("*.npz"))) < n:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited early"
        assert time.time() < deadline, "no frames in time"
        time.sleep(0.05)


def _start_run(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybridsim.cli", "run", f"scenario={DROP}", f"out_dir={out}",
                             "scenario.timing.duration=10.0", "refine.enabled=false", "reference=none",
                             "progress=false", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_keeps_finished_frames_playable(tmp_path):
    from hybridsim.output.writers import read_table, read_video

    out = tmp_path / "run"
    proc = _start_run(out)
    labels = out / "labels" / "main" / "env0"
    _wait_for_frames(proc, labels, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running" and record["pid"] == proc.pid
    files = sorted(labels.glob("*.npz"))
    n = len(files)
    assert [f.name for f in files] == [f"{i:06d}.npz" for i in range(n)]
    for f in files:  # whole files only: the one being written at the kill was still in .staging
        with np.load(f) as z:
            assert z["depth"].shape == (48, 64)
    for video in ("coarse_main.mp4", "lit_main.mp4"):
        frames = read_video(out / video)
        assert len(frames) >= n - 1 and frames[0].shape == (48, 64, 3), (video, len(frames), n)
    poses = read_table(out / "poses.parquet")
    assert set(range(n)) <= set(poses.column("frame").to_pylist())
    assert poses.num_rows % 3 == 0  # whole frames of 3 bodies
    for line in (out / "events.jsonl").read_text().splitlines():
        json.loads(line)
    r = cli("run", f"scenario={DROP}", f"out_dir={out}", "refine.enabled=false")
    assert r.returncode == 2 and "killed after" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_sigint_records_interrupted_and_closes_every_file(tmp_path):
    from hybridsim.output.writers import read_video

    out = tmp_path / "run"
    proc = _start_run(out)
    _wait_for_frames(proc, out / "labels" / "main" / "env0", 5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["frames"] >= 5
    assert len(read_video(out / "coarse_main.mp4")) == record["frames"]
    import pyarrow.parquet as pq

    assert pq.read_table(out / "poses.parquet").num_rows == 3 * record["frames"]
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_blow_up_caused_by_an_event_still_records_the_event(tmp_path):
    scene = scenario_file(tmp_path, events=[{"at": 0.1, "kind": "impulse", "entity": "ball",
                                             "vector": [0.0, 0.0, 5000.0]}])
    out = tmp_path / "run"
    r = cli("run", f"scenario={scene}", f"out_dir={out}", "scenario.timing.duration=0.5", "refine.enabled=false",
            "reference=none", "render.enabled=false", "progress=false", timeout=600)
    assert r.returncode == 1 and "PhysicsError" in r.stderr and "Traceback" not in r.stderr, r.stderr
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["event0"] and events[0]["t"] == pytest.approx(0.1)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "blew up" in record["error"]

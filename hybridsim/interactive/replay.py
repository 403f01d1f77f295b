"""`hybridsim replay FILE [out_dir=DIR] [overwrite=true]`: rerun a recorded session (recording.py)
and write its run folder, checking every step's digest against the recording."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hybridsim.interactive.errors import InteractiveError
from hybridsim.interactive.recording import digest, read_recording

DEFAULTS = {"out_dir": None, "overwrite": False, "verify": True}


def replay(path: str | Path, out_dir: str | Path | None = None, overwrite: bool = False, verify: bool = True) -> dict:
    """Replay a recording into `out_dir` (default runs/replay_<file stem>) -> the summary (run.json's "replay").
    With verify, a digest that differs from the recording raises InteractiveError after the
    folder is written (run.json's "observed" rows mark the mismatches)."""
    from hybridsim.config import RunConfig, save_yaml
    from hybridsim.interactive.session import Session
    from hybridsim.output.rundir import claim_run_dir

    header, ops = read_recording(path)
    data = dict(header["config"])
    cfg = RunConfig.from_dict(data, header.get("base_dir"))
    out = claim_run_dir(Path(out_dir) if out_dir is not None else Path("runs") / f"replay_{Path(path).stem}", overwrite)
    save_yaml(cfg.to_dict(), out / "config.yaml")
    if header.get("torch_threads"):  # CPU reductions split by thread: the recording's count repeats its bits
        import torch

        torch.set_num_threads(int(header["torch_threads"]))
    t0 = time.perf_counter()
    session = Session(cfg, header.get("base_dir"), tuple(header.get("images", ())))
    if session.layout.names != header["actions"]:
        raise InteractiveError(f"the recording's actions {header['actions'][:4]}... differ from this scenario's "
                               f"{session.layout.names[:4]}...; replay with the hybridsim version that recorded it")
    writer = _Writer(out, session, cfg)
    saved, mismatch, steps = {}, None, 0
    try:
        for i, op in enumerate(ops):
            kind = op["op"]
            if kind == "reset":
                session.reset_episode(op["root_seed"], op["episode"])
            elif kind == "step":
                session.step(op["actions"], reset=op.get("reset"))
                steps += 1
            elif kind == "save":
                saved[op["tag"]] = session.save(op["tag"])
                continue
            else:
                if op["tag"] not in saved:
                    raise InteractiveError(f"{path}: operation {i} restores {op['tag']!r}, never saved before it")
                session.restore(saved[op["tag"]])
            got = digest(session) if kind != "restore" else None
            ok = got is None or op.get("digest") in (None, got)
            if not ok and mismatch is None:
                mismatch = i
            writer.frame(i, kind, got, ok, session)
    finally:
        writer.close()
    summary = {"recording": str(Path(path).resolve()), "operations": len(ops), "steps": steps,
               "verified": mismatch is None, "first_mismatch": mismatch, "seconds": round(time.perf_counter() - t0, 3),
               "scenario": cfg.scenario.name, "n_envs": cfg.n_envs}
    record = {"status": "ok", "frames": len(writer.rows), "config": cfg.to_dict(), "replay": summary,
              "observed": writer.rows}
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    if verify and mismatch is not None:
        raise InteractiveError(f"replay of {path} differs from the recording at operation {mismatch} (see "
                               f"'observed' in {out / 'run.json'}); was it recorded with another version or machine?")
    return summary


class _Writer:
    """The run folder: refined videos per camera (and env), events.jsonl; `rows` (one per observed
    frame: operation, kind, frame index, digest, match) go into run.json."""

    def __init__(self, out: Path, session, cfg):
        from hybridsim.output.video import StreamWriter, VideoSettings

        fps = max(1, int(round(cfg.scenario.timing.fps)))
        self.out, self.videos = out, {}
        for name, cam in session.sim.cameras.items():
            for b in range(session.n_envs):
                suffix = f"_env{b}" if session.n_envs > 1 else ""
                self.videos[(name, b)] = StreamWriter(out / f"refined_{name}{suffix}.mp4", fps, cam.width, cam.height,
                                                      VideoSettings(crf=18, gop=2))
        self.rows: list[dict] = []
        self.events = open(out / "events.jsonl", "w")

    def frame(self, i: int, kind: str, got: str | None, ok: bool, session) -> None:
        self.rows.append({"op": i, "kind": kind, "frame": int(session.frame.index), "digest": got, "match": ok})
        if kind == "step":
            for r in session.frame.events:
                self.events.write(json.dumps(r) + "\n")
        for (name, b), w in self.videos.items():
            w.write(session.refined[name][b])

    def close(self) -> None:
        for w in self.videos.values():
            w.close()
        self.events.close()


def main(overrides: list[str]) -> int:
    """CLI: hybridsim replay FILE [out_dir=DIR] [overwrite=true] [verify=false]."""
    from hybridsim.scenario.spec import SpecError

    files = [o for o in overrides if "=" not in o]
    if len(files) != 1:
        raise SpecError("replay", "give one recording file: hybridsim replay FILE [out_dir=DIR] [overwrite=true]")
    opts = dict(DEFAULTS)
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            if k not in opts:
                raise SpecError(k, f"unknown replay option; options are {sorted(opts)}")
            opts[k] = v.lower() in ("1", "true", "yes") if k in ("overwrite", "verify") else v
    try:
        s = replay(files[0], opts["out_dir"], opts["overwrite"], opts["verify"])
    except InteractiveError as err:
        raise SpecError("replay", str(err)) from None
    print(f"replayed {s['operations']} operations ({s['steps']} steps) of {files[0]}: "
          f"{'bit-identical' if s['verified'] else 'DIFFERENT'}")
    return 0

"""Recording and replay of interactive sessions.

A recording is a JSON Lines file: a header line (format, the composed run config with its
scenario, the scenario folder, the number of environments, the extra image kinds, the action
names, torch's thread count), then one line per operation on the session: `reset` (root seed and episode index),
`step` (the actions [B, A] as applied, the envs autoreset at it if any, and a digest of what the
step produced), `save` and
`restore` (by tag, so branches replay too). A digest is the SHA-256 of the refined images of
every camera and env and of the body poses and joint positions, so a replay can prove itself
bit-identical step by step. `replay(FILE, out_dir)` rebuilds the session from the header, runs
the operations, checks every digest and writes a run folder: per camera (and env) the refined
frames in the order they were observed, `events.jsonl`, and `run.json` with the outcome and one
row per observed frame (operation, frame index, digest, match).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hybridsim.interactive.errors import InteractiveError

FORMAT = "hybridsim-session"
VERSION = 1


def digest(session) -> str:
    """SHA-256 of the session's current observation: refined images, body poses, joint positions."""
    h = hashlib.sha256()
    for cam in sorted(session.refined):
        h.update(np.ascontiguousarray(session.refined[cam]).tobytes())
    st = session.frame.state
    for t in (st.body_pos, st.body_quat):
        h.update(t.contiguous().numpy().tobytes())
    for name in sorted(st.joint_pos):
        h.update(st.joint_pos[name].contiguous().numpy().tobytes())
    return h.hexdigest()


class Recorder:
    """Logs a Session's operations to a file as they happen (attach with `record`)."""

    def __init__(self, session, path: str | Path):
        self.session, self.path = session, Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w")
        cfg = session.cfg
        self._write({"format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
                     "base_dir": None if session.base_dir is None else str(session.base_dir),
                     "n_envs": session.n_envs, "images": list(session.images), "actions": session.layout.names,
                     "torch_threads": _torch_threads()})
        self.started = False  # operations count from the first reset
        self._tags: set[str] = set()
        self.ops = 0

    def _write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()  # a crash keeps every finished operation

    def log_reset(self, root_seed: int, episode: int) -> None:
        self.started = True
        self._write({"op": "reset", "root_seed": root_seed, "episode": episode})
        self.ops += 1

    def log_step(self, actions: np.ndarray, reset: list[int] | None = None) -> None:
        if self.started:
            row = {"op": "step", "actions": actions.astype(np.float32).tolist()}
            if reset:
                row["reset"] = [int(b) for b in reset]  # envs autoreset at this step
            self._write(row)
            self.ops += 1

    def after(self) -> None:
        """Called once the operation's frame exists: its digest, for the replay to check."""
        if self.started:
            self._write({"digest": digest(self.session)})

    def log_save(self, tag: str | None) -> str:
        tag = tag if tag is not None else f"save{len(self._tags)}"
        if tag in self._tags:
            raise InteractiveError(f"save tag {tag!r} is already used in this recording; give another")
        if self.started:
            self._tags.add(tag)
            self._write({"op": "save", "tag": tag})
            self.ops += 1
        return tag

    def log_restore(self, tag: str | None) -> None:
        if not self.started:
            return
        if tag not in self._tags:
            raise InteractiveError(f"cannot record a restore of state {tag!r}: it was saved before the recording "
                                   "started (or in another session); save it again after starting the recording")
        self._write({"op": "restore", "tag": tag})
        self.ops += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _torch_threads() -> int:
    """torch's CPU thread count: reductions split by thread, so a replay uses the same count."""
    import torch

    return torch.get_num_threads()


def record(session, path: str | Path) -> Recorder:
    """Start recording `session` to `path` (operations count from the next reset)."""
    if session.recorder is not None:
        session.recorder.close()
    session.recorder = Recorder(session, path)
    return session.recorder


def stop_recording(session) -> Path | None:
    rec, session.recorder = session.recorder, None
    if rec is None:
        return None
    rec.close()
    return rec.path


def read_recording(path: str | Path) -> tuple[dict, list[dict]]:
    """-> (header, operations with their digests folded in). InteractiveError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InteractiveError(f"recording '{path}' is not a file; give the .jsonl written by env.record()")
    header, ops = None, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InteractiveError(f"{path}:{n} is not JSON ({err.msg}); the file is not a hybridsim recording "
                                       "or was cut") from None
            if header is None:
                if not isinstance(row, dict) or row.get("format") != FORMAT or row.get("version") != VERSION:
                    raise InteractiveError(f"{path}: not a {FORMAT} v{VERSION} recording (first line)")
                header = row
            elif "digest" in row and ops:
                ops[-1]["digest"] = row["digest"]
            elif row.get("op") in ("reset", "step", "save", "restore"):
                ops.append(row)
            else:
                raise InteractiveError(f"{path}:{n}: unknown operation {str(row)[:60]}")
    if header is None:
        raise InteractiveError(f"{path} is empty; record a session with env.record(path)")
    return header, ops

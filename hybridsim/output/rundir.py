"""Run folders: which folder `hybridsim run` may write into, and what `overwrite=true` may delete.

A run folder is hybridsim's when it holds MARKER, written first when the run claims the folder
(or, for folders written before the marker existed, a run.json with a run's record). overwrite=true
replaces only such a folder, and only when every file in it is one a run writes: a folder of the
user's (their notes, $HOME) is never deleted, whatever the options say. A folder left by an
unfinished run (killed: run.json still says "running" and no process of that id is alive; failed;
interrupted) is described as such, with what it still holds, when a new run is pointed at it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from hybridsim.scenario.spec import SpecError

MARKER = ".hybridsim-run"
RUN_FILES = {MARKER, "config.yaml", "run.json", "events.jsonl", "poses.parquet", "cameras.parquet",
             "poses.parquet.partial", "cameras.parquet.partial"}
VIDEO = re.compile(r"(reference|coarse|lit|pathtraced|refined|compare)_[^/]+\.mp4")
TEMP = re.compile(r"(\..+\.(tmp|remux)\d+.*|run\.json\.tmp\d+|\.hybridsim-run\.tmp\d+)")  # writers' temp names
LABEL = re.compile(r"(\d{6}\.npz|instances\.json)")


@dataclass
class PreviousRun:
    """What run.json says about the run that wrote a folder."""

    status: str  # ok | failed | interrupted | running (never finished: killed, or still going)
    frames: int
    pid: int | None
    host: str | None
    error: str | None

    @property
    def alive(self) -> bool:
        """A run of this machine still writing the folder (its process exists)."""
        if self.status != "running" or not self.pid or self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    def describe(self) -> str:
        if self.status == "running":
            return (f"a run that was killed after {self.frames} finished frame(s) (run.json still says "
                    f"'running' and its process {self.pid} is gone); its finished frames are kept: the videos "
                    "play up to the kill and the tables are in *.parquet.partial (hybridsim.output.writers."
                    "read_table reads them)")
        if self.status == "ok":
            return f"a finished run ({self.frames} frames)"
        why = f": {self.error[:120]}" if self.error else ""
        return f"an unfinished run (status '{self.status}' after {self.frames} frame(s){why})"


def claim_run_dir(out: Path, overwrite: bool) -> Path:
    """Make `out` this run's folder (created and marked), or SpecError saying why not and what to do.
    Called after every option is validated and before anything heavy starts."""
    if out.exists() and not out.is_dir():
        raise SpecError("out_dir", f"'{out}' is a file, not a folder; give a folder path (it is created if missing)")
    try:
        if out.is_dir() and any(out.iterdir()):
            _clear_previous(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        from hybridsim.output.writers import write_json

        write_json(out / MARKER, {"kind": "hybridsim run folder", "note": "overwrite=true may replace this "
                                  "folder; it deletes only the files a run writes"})
    except OSError as exc:
        raise SpecError("out_dir", f"cannot write to '{out}' ({exc.strerror or type(exc).__name__}); "
                                   "choose a writable folder") from None
    return out


def previous_run(out: Path) -> PreviousRun | None:
    """The record of the run that wrote `out`, or None when `out` is not a run folder of hybridsim."""
    record = _read_record(out / "run.json")
    marked = (out / MARKER).is_file()
    legacy = record is not None and "config" in record and (out / "config.yaml").is_file()
    if not (marked or legacy):
        return None
    if record is None:  # marked, but killed before run.json was written
        return PreviousRun("running", 0, None, None, None)
    frames = record.get("frames")
    return PreviousRun(str(record.get("status", "running")), frames if isinstance(frames, int) else 0,
                       record.get("pid") if isinstance(record.get("pid"), int) else None,
                       record.get("host") if isinstance(record.get("host"), str) else None,
                       record.get("error") if isinstance(record.get("error"), str) else None)


def _read_record(path: Path) -> dict | None:
    try:
        if not path.is_file() or path.stat().st_size > 16 << 20:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clear_previous(out: Path, overwrite: bool) -> None:
    prev = previous_run(out)
    if prev is None:
        raise SpecError("out_dir", f"'{out}' exists, is not empty and is not a hybridsim run folder (no {MARKER}); "
                                   "choose another out_dir: overwrite=true only replaces folders hybridsim run wrote")
    if prev.alive:
        raise SpecError("out_dir", f"'{out}' is being written by another hybridsim run (process {prev.pid}); "
                                   "wait for it to finish or choose another out_dir")
    nothing_kept = prev.status != "ok" and prev.frames == 0  # a run that failed before its first frame
    if not overwrite and not nothing_kept:
        raise SpecError("out_dir", f"'{out}' holds {prev.describe()}; pass overwrite=true to replace it, "
                                   "or choose another out_dir")
    foreign = foreign_entries(out)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise SpecError("out_dir", f"'{out}' is a hybridsim run folder but also holds '{foreign[0]}'{more}, which "
                                   "hybridsim did not write; move them out or choose another out_dir")
    for entry in sorted(out.iterdir(), key=lambda p: p.name == MARKER):  # the marker last
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def foreign_entries(out: Path) -> list[str]:
    """Paths (relative to `out`) that a run does not write: their presence forbids deleting `out`."""
    foreign = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if entry.is_symlink():
            foreign.append(name)
        elif entry.is_dir():
            if name != "labels":
                foreign.append(name + "/")
            else:
                foreign += _foreign_labels(entry)
        elif not (name in RUN_FILES or VIDEO.fullmatch(name) or TEMP.fullmatch(name)):
            foreign.append(name)
    return foreign


def _foreign_labels(root: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):  # does not follow symlinked folders
        base = Path(folder)
        out += [str((base / d).relative_to(root.parent)) for d in dirs if (base / d).is_symlink()]
        out += [str((base / f).relative_to(root.parent)) for f in files
                if (base / f).is_symlink() or not (LABEL.fullmatch(f) or TEMP.fullmatch(f) or f.endswith(".npz"))]
    return out

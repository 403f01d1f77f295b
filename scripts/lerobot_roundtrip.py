"""Check a fresh hybridsim dataset with the real LeRobot, in a virtual environment of its own.

    python scripts/lerobot_roundtrip.py                       # franka_push, 2 episodes, depth video
    python scripts/lerobot_roundtrip.py --dataset DIR         # an existing dataset
    python scripts/lerobot_roundtrip.py --venv ~/.cache/hybridsim-lerobot --log out.txt

LeRobot 0.6 needs Python >= 3.12 and torch < 2.12, so it cannot share hybridsim's environment. This
script (run with hybridsim's Python) makes the dataset with `hybridsim batch`, creates the venv with
python3.12 (PATH or pyenv) unless it exists, installs the current `lerobot[dataset]` release from the
package registry, and runs scripts/lerobot_checks.py there: load, append with LeRobot's writer and
reload, merge both orders with a dataset LeRobot wrote, re-encode, delete an episode, with every
warning counted as a failure. Exit status 0 when every check passed.

torchcodec is removed from the venv when it cannot load FFmpeg's shared libraries (none on a machine
with PyAV only); LeRobot then decodes with PyAV, as it does by default there.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = ["scenario=franka_push", "episodes=2", "scenario.timing.duration=1.0", "refine.enabled=false",
         "depth_video=true", "progress=false", "overwrite=true"]


def python312() -> str:
    for cand in [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
                 *sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12"))]:
        if cand and Path(cand).exists():
            return cand
    sys.exit("lerobot_roundtrip: no python3.12 found (PATH or ~/.pyenv/versions/3.12*); install one, "
             "e.g. pyenv install 3.12")


def run(cmd: list[str], log, **kw) -> int:
    print("$ " + " ".join(cmd), file=log, flush=True)
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kw)


def ensure_venv(venv: Path, log) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        if run([python312(), "-m", "venv", str(venv)], log):
            sys.exit(f"lerobot_roundtrip: could not create {venv}")
    if subprocess.call([str(py), "-c", "import lerobot, datasets, av"], stderr=subprocess.DEVNULL):
        if run([str(py), "-m", "pip", "install", "-q", "lerobot[dataset]"], log):
            sys.exit("lerobot_roundtrip: pip install 'lerobot[dataset]' failed")
    if subprocess.call([str(py), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchcodec') is None)"]) == 0:
        if subprocess.call([str(py), "-c", "import torchcodec"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL):
            run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchcodec"], log)  # cannot load FFmpeg here
    return py


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="an existing dataset (default: make one with hybridsim batch)")
    p.add_argument("--work", default="/tmp/hybridsim-lerobot-roundtrip", help="scratch folder")
    p.add_argument("--venv", default=os.path.expanduser("~/.cache/hybridsim-lerobot-venv"))
    p.add_argument("--log", help="also write the checks' output here")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = open(a.log, "w") if a.log else open(os.devnull, "w")
    t0 = time.perf_counter()
    dataset = Path(a.dataset) if a.dataset else work / "dataset"
    if not a.dataset:
        cmd = [sys.executable, "-m", "hybridsim.cli", "batch", *BATCH, f"out_dir={dataset}"]
        if run(cmd, log, stderr=subprocess.DEVNULL):
            sys.exit("lerobot_roundtrip: hybridsim batch failed (run the command above to see why)")
    py = ensure_venv(Path(a.venv), log)
    out = subprocess.run([str(py), str(HERE / "lerobot_checks.py"), str(dataset), str(work / "checks")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    print(out.stdout, end="")
    log.write(out.stdout)
    print(f"round-trip done in {time.perf_counter() - t0:.0f} s, exit {out.returncode}")
    log.close()
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())

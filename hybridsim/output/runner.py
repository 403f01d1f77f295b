"""`hybridsim run`: one episode -> a run folder of videos, labels, tables and run.json.

Order of work, so that bad input costs seconds and nothing of the user's is lost: compose and
validate the config (scenario files opened and checked by content), `preflight` (every option, the
refiner's weights folder, the memory the run will take), claim the output folder (rundir: only a
folder hybridsim marked as its own is ever replaced), write run.json with status "running", and
only then import and build Genesis. Every frame is written as it arrives in a form that survives a
hard kill (output.writers); run.json ends as "ok", "failed" or "interrupted" (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridsim.config import RunConfig, compose, save_yaml
from hybridsim.output.labels import LabelWriter
from hybridsim.output.rundir import claim_run_dir
from hybridsim.scenario.spec import Scenario, SpecError, events_after_end
from hybridsim.output.writers import TableWriter, VideoWriter, linear_to_srgb, to_uint8, write_json

log = logging.getLogger("hybridsim")


@dataclass
class RunResult:
    out_dir: Path
    n_frames: int  # frames written per camera and environment
    n_envs: int
    status: str  # "ok", "failed" or "interrupted" (the last two also raise)
    files: list[str] = field(default_factory=list)  # relative to out_dir
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # also in run.json and logged (events that cannot fire)


def resolve_config(scenario: str | Scenario | RunConfig, overrides=(), **kwargs) -> tuple[RunConfig, Path | None]:
    """Accept a scenario name / YAML path / Scenario / RunConfig plus overrides or keyword args."""
    if isinstance(scenario, RunConfig):
        cfg, base = scenario, None
    elif isinstance(scenario, Scenario):
        data = compose([*overrides]).to_dict()
        data["scenario"] = scenario.to_dict()
        cfg, base = RunConfig.from_dict(data), None
    else:
        from hybridsim.config import compose_dict

        data, base = compose_dict([f"scenario={scenario}", *overrides])
        cfg = RunConfig.from_dict(data, base)
    if kwargs:
        data = cfg.to_dict()
        for k, v in kwargs.items():
            if k not in data:
                raise SpecError(k, f"unknown run option; options are {sorted(data)}")
            data[k] = str(v) if isinstance(v, Path) else v
        cfg = RunConfig.from_dict(data, base)
    return cfg, base


class RunTerminated(KeyboardInterrupt):
    """SIGTERM during a run: handled like Ctrl-C (finished frames kept, status "interrupted")."""


def run(scenario: str | Scenario | RunConfig = "default", overrides=(), **kwargs) -> RunResult:
    """Simulate one episode and write its run folder. See README "Outputs" and docs/reliability.md."""
    cfg, base = resolve_config(scenario, overrides, **kwargs)
    warnings = preflight(cfg)
    out = claim_run_dir(cfg.output_dir, cfg.overwrite)
    t_start = time.perf_counter()
    save_yaml(cfg.to_dict(), out / "config.yaml")
    journal = RunJournal(out, cfg, warnings)
    sim = sink = refiner = None
    status, error = "failed", None
    signals = _Interrupts()
    try:
        with signals.installed():
            from hybridsim.pipeline import Simulation
            from hybridsim.refining import frame_stream

            sim = Simulation(cfg, base_dir=base)
            stream, refiner = frame_stream(cfg, sim)
            sink = RunSink(out, sim)
            for frame in _progress(stream, sim.n_frames, cfg.progress, cfg.scenario.name):
                with signals.deferred():  # a frame is written to every output, or to none
                    sink.write(frame)
                journal.progress(sim, sink)
        status = "ok"
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep every finished frame, say it was cut short
        status, error = "interrupted", "SIGTERM" if isinstance(exc, RunTerminated) else "KeyboardInterrupt (Ctrl-C)"
        raise
    except BaseException as exc:  # keep every finished frame, record the failure, re-raise
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        timings = _finish(sim, sink, refiner, t_start)
        journal.write(status, sim, sink, error, timings)
    return RunResult(out, sink.n_frames, cfg.n_envs, status, sorted(sink.files + ["run.json", "config.yaml"]),
                     timings, error, warnings)


def _finish(sim, sink, refiner, t_start: float) -> dict:
    """Close what was opened (a close that fails must not hide the run's own error) -> timings."""
    for closing in (sink, sim):
        if closing is not None:
            try:
                closing.close()
            except Exception as exc:  # noqa: BLE001 - recorded; the run's status says what went wrong first
                log.warning("hybridsim: warning: closing %s failed: %s: %s", type(closing).__name__,
                            type(exc).__name__, exc)
    timings = dict(sim.timings if sim is not None else {}, total_s=time.perf_counter() - t_start,
                   write_s=sink.write_s if sink is not None else 0.0)
    if refiner is not None:
        timings.update(refiner.timings)
    timings["frames_per_s"] = (sink.n_frames if sink is not None else 0) / max(timings["total_s"], 1e-9)
    return timings


class _Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (what `kill` and job schedulers send) end the run as a
    KeyboardInterrupt, so the writers close and run.json says "interrupted"; but never in the middle
    of writing a frame: one that arrives then is raised as soon as the frame is whole, so every
    video, table and label folder holds the same frames. Only the main thread can install handlers."""

    def __init__(self):
        self._writing, self._pending = False, None

    def _handler(self, signum, frame):
        exc = RunTerminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
        if self._writing:
            self._pending = exc
            return
        raise exc

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self):
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc


# ---------------------------------------------------------------------------- before anything heavy

BYTES_PER_PIXEL = 256  # per env and camera: G-buffer, lit render, reference, refiner condition, frame copies
ENCODER_BYTES = 2 << 20  # one libx264 encoder (zerolatency) measured at 1.1-1.5 MiB
BYTES_PER_GAUSSIAN = 64  # posed splat parameters per env
MAX_OPEN_FILES_MARGIN = 64  # descriptors left for Genesis, torch, the tables and the labels


def preflight(cfg: RunConfig) -> list[str]:
    """Everything about a run that can be checked before Genesis, bpy or a model loads, so bad
    input fails in seconds with one line (SpecError). Returns warnings (events that cannot fire)."""
    if cfg.render.backend == "gsplat":
        import torch

        if not torch.cuda.is_available():
            raise SpecError("render.backend", "gsplat needs CUDA (gsplat.rasterization has no CPU kernels) and this "
                                              "machine has none; use render.backend=auto or torch")
    if cfg.pathtraced_reference:
        import importlib.util

        if importlib.util.find_spec("bpy") is None:
            raise SpecError("reference", f"reference={cfg.reference} needs Blender's Python module for Cycles; "
                                         "pip install bpy, or use reference=raster or none")
    from hybridsim.refining import check_refine

    check_refine(cfg)
    check_run_size(cfg)
    warnings = events_after_end(cfg.scenario)
    for w in warnings:
        log.warning("hybridsim: warning: %s", w)
    return warnings


def check_run_size(cfg: RunConfig) -> None:
    """n_envs against this machine: open files (one video per env, camera and kind) and memory (a
    rough estimate from the cameras' pixels, the encoders and the bodies' Gaussians)."""
    from refine.checkpoint import available_bytes

    cams = [c for c in cfg.scenario.cameras if all(isinstance(v, int) for v in c.res)]
    kinds = _video_kinds(cfg)
    n_files = cfg.n_envs * len(cfg.scenario.cameras) * kinds
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        limit = -1
    if 0 < limit < n_files + MAX_OPEN_FILES_MARGIN:
        raise SpecError("n_envs", f"n_envs={cfg.n_envs} writes {n_files} videos at once ({len(cfg.scenario.cameras)} "
                                  f"camera(s) x {kinds} kinds per env), above this process's open-file limit of "
                                  f"{limit} (ulimit -n); lower n_envs, or reference=none / render.lit=false")
    per_env = sum(c.res[0] * c.res[1] * (BYTES_PER_PIXEL + 24 * kinds) + kinds * ENCODER_BYTES for c in cams)
    if cfg.render.enabled:
        bodies = sum(1 for e in cfg.scenario.entities if e.type != "plane") +             sum(t.capacity for t in cfg.scenario.templates)
        per_env += bodies * cfg.render.max_gaussians * BYTES_PER_GAUSSIAN
    need, have = cfg.n_envs * per_env, available_bytes()
    if need > have:
        raise SpecError("n_envs", f"n_envs={cfg.n_envs} needs about {need / 2**30:.1f} GiB (estimated: "
                                  f"{per_env / 2**20:.1f} MiB per environment) but {have / 2**30:.1f} GiB are "
                                  f"available; lower n_envs (at most ~{max(1, have // max(per_env, 1))}) or the "
                                  "camera resolution")


def _video_kinds(cfg: RunConfig) -> int:
    """Videos per env and camera: reference, pathtraced, coarse, lit, refined, compare (as enabled)."""
    render = cfg.render.enabled
    refine = cfg.refine.enabled and render
    return (cfg.raster_reference + cfg.pathtraced_reference + render + (render and cfg.render.lit)
            + 2 * refine)


# ---------------------------------------------------------------------------- run.json


class RunJournal:
    """run.json through a run's life: "running" from the start (with this process's id and host, so a
    later run can tell a killed run from one still going), the frames finished so far (updated at
    most every PROGRESS_S), then "ok", "failed" or "interrupted" with timings. A run killed with
    SIGKILL leaves "running" and the count of its finished frames. Writes are atomic."""

    PROGRESS_S = 1.0

    def __init__(self, out: Path, cfg: RunConfig, warnings: list[str]):
        self.out, self.cfg, self.warnings = out, cfg, warnings
        self._versions = _versions()
        self._last = time.monotonic()
        self.write("running")

    def progress(self, sim, sink) -> None:
        if time.monotonic() - self._last >= self.PROGRESS_S:
            self.write("running", sim, sink)

    def write(self, status: str, sim=None, sink=None, error: str | None = None, timings: dict | None = None) -> None:
        self._last = time.monotonic()
        record = _run_record(self.cfg, sim, sink, status, error, timings or {}, self._versions)
        record.update(pid=os.getpid(), host=socket.gethostname(), warnings=self.warnings)
        write_json(self.out / "run.json", record)


def _progress(it, total: int, enabled: bool, name: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=f"run {name}", unit="frame", dynamic_ncols=True)


class RunSink:
    """Writes each frame as it arrives: videos, poses/cameras tables, labels."""

    def __init__(self, out: Path, sim):
        self.out, self.sim = out, sim
        self.videos: dict[str, VideoWriter] = {}
        self.poses = TableWriter(out / "poses.parquet")
        self.cams = TableWriter(out / "cameras.parquet")
        self.events = (out / "events.jsonl").open("w")  # fired events, appended as they happen
        self._logged: set[int] = set()  # ids of the event records written (they live on in sim.event_log)
        self.n_frames, self.write_s = 0, 0.0
        self.files: list[str] = ["poses.parquet", "cameras.parquet", "events.jsonl"]
        self._bodies = sim.world.bodies
        sc = sim.scenario
        index = {e.name: i for i, e in enumerate(sc.entities)}
        self._classes = [sc.entities[index[b.entity]].semantic_class for b in self._bodies]
        self._inst = [index[b.entity] + 1 for b in self._bodies]
        self.labels = None
        if sim.splats is not None:
            from hybridsim.output.labels import LabelWriter

            self.labels = StagedLabelWriter(out / "labels", sim)

    def _video(self, kind: str, cam, env: int, panels: int = 1) -> VideoWriter:
        suffix = "" if self.sim.cfg.n_envs == 1 else f"_env{env}"
        name = f"{kind}_{cam.name}{suffix}.mp4"
        if name not in self.videos:
            self.videos[name] = VideoWriter(self.out / name, self.sim.scenario.timing.fps, cam.width * panels,
                                            cam.height, fragmented=True)
            self.files.append(name)
        return self.videos[name]

    def write(self, frame) -> None:
        t0 = time.perf_counter()
        B = self.sim.cfg.n_envs
        refined = frame.refined
        for name, cam in frame.cameras.items():
            for b in range(B):
                ref = frame.reference[name].rgb[b] if name in frame.reference else None
                coarse = None
                if ref is not None:
                    self._video("reference", cam, b).write(ref)
                if name in frame.gbuffer:  # splat colours are linear; videos are sRGB like the reference
                    coarse = to_uint8(linear_to_srgb(frame.gbuffer[name].rgb[b, 0]))
                    self._video("coarse", cam, b).write(coarse)
                if name in frame.lit:
                    self._video("lit", cam, b).write(to_uint8(linear_to_srgb(frame.lit[name].rgb[b, 0])))
                traced = frame.pathtraced[name].rgb[b] if name in frame.pathtraced else None
                if traced is not None:
                    self._video("pathtraced", cam, b).write(traced)
                if name in refined:
                    self._video("refined", cam, b).write(refined[name][b])
                    panels = [p for p in (coarse, refined[name][b], traced, ref) if p is not None]
                    self._video("compare", cam, b, len(panels)).write(np.concatenate(panels, axis=1))
        self._log_events(frame.events)
        self.poses.append(self._pose_rows(frame))
        self.cams.append(self._camera_rows(frame))
        if self.labels is not None:
            self.labels.write(frame)
        self.n_frames += 1
        self.write_s += time.perf_counter() - t0

    def _pose_rows(self, frame) -> dict[str, list]:
        s = frame.state
        B, K = s.body_pos.shape[:2]
        pos, quat = s.body_pos.numpy().reshape(-1, 3), s.body_quat.numpy().reshape(-1, 4)
        vel, ang = s.body_lin_vel.numpy().reshape(-1, 3), s.body_ang_vel.numpy().reshape(-1, 3)
        rows = {
            "frame": [frame.index] * (B * K), "t": [frame.t] * (B * K),
            "env": np.repeat(np.arange(B), K).tolist(), "body": np.tile(np.arange(K), B).tolist(),
            "entity": [b.entity for b in self._bodies] * B, "link": [b.link for b in self._bodies] * B,
            "semantic_class": self._classes * B, "instance_id": self._inst * B,
        }
        for i, ax in enumerate("xyz"):
            rows[f"p{ax}"], rows[f"v{ax}"], rows[f"w{ax}"] = pos[:, i].tolist(), vel[:, i].tolist(), ang[:, i].tolist()
        for i, ax in enumerate("wxyz"):
            rows[f"q{ax}"] = quat[:, i].tolist()
        return rows

    def _camera_rows(self, frame) -> dict[str, list]:
        rows: dict[str, list] = {k: [] for k in ("frame", "t", "env", "camera", "width", "height",
                                                 "fx", "fy", "cx", "cy", "K", "viewmat")}
        for name, cam in frame.cameras.items():
            for b in range(cam.viewmat.shape[0]):
                K = cam.K[b]
                for k, v in (("frame", frame.index), ("t", frame.t), ("env", b), ("camera", name),
                             ("width", cam.width), ("height", cam.height), ("fx", K[0, 0]), ("fy", K[1, 1]),
                             ("cx", K[0, 2]), ("cy", K[1, 2]), ("K", K.reshape(-1).tolist()),
                             ("viewmat", cam.viewmat[b].reshape(-1).tolist())):
                    rows[k].append(v)
        return rows

    def _log_events(self, records: list[dict]) -> None:
        for record in records:
            if id(record) not in self._logged:
                self._logged.add(id(record))
                self.events.write(json.dumps(record, default=_json_default) + "\n")
        self.events.flush()  # each line reaches the OS whole: a kill cuts at most the line being written

    def close(self) -> None:
        # events that fired in steps whose frame was never written (a physics blow-up right after an
        # impulse, an interrupt): they did happen, and are often the reason the run stopped
        self._log_events(self.sim.event_log)
        self.events.close()
        for v in self.videos.values():
            v.close()
        self.poses.close()
        self.cams.close()
        if self.labels is not None:
            self.labels.close()
            self.files += self.labels.files


class StagedLabelWriter(LabelWriter):
    """LabelWriter whose files appear whole: a frame's .npz files are written under labels/.staging
    and renamed into place (os.replace is atomic), so a process killed mid-write leaves no half file
    among the labels. (LabelWriter writes under self.root; writing there atomically itself would
    make this class unnecessary.)"""

    def __init__(self, root: Path, sim):
        super().__init__(root, sim)
        self.final, self.staging = root, root / ".staging"

    def write(self, frame) -> None:
        self.root = self.staging
        try:
            super().write(frame)
        finally:
            self.root = self.final
        for path in sorted(self.staging.rglob("*.npz")):
            dest = self.final / path.relative_to(self.staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        super().close()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hybridsim", "genesis-world", "torch", "gsplat", "diffusers", "numpy", "av", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_record(cfg, sim, sink, status, error, timings, versions=None) -> dict:
    """run.json's content; sim and sink are None before the world is built."""
    return {
        "status": status,
        "error": error,
        "scenario": cfg.scenario.name,
        "frames": sink.n_frames if sink is not None else 0,
        "n_frames": sim.n_frames if sim is not None else None,
        "n_envs": cfg.n_envs,
        "fps": cfg.scenario.timing.fps,
        "seeds": {"root": cfg.scenario.seed, "episode": cfg.episode, "envs": sim.seeds if sim is not None else None},
        "require": _require_status(sim) if sim is not None and status != "running" else None,
        "end_frame": [int(v) for v in getattr(sim, "end_frame", [])],
        "bodies": [{"slot": k, "entity": b.entity, "link": b.link} for k, b in enumerate(sim.world.bodies)]
        if sim is not None else [],
        "files": sorted(sink.files) if sink is not None else [],
        "timings": timings,
        "versions": versions or _versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpus()},
        "config": cfg.to_dict(),
    }


def _require_status(sim) -> list[str | None]:
    """Per env: None when every `require` clause of the scenario held, else the reason."""
    try:
        return list(sim.require_status())
    except Exception as exc:  # a failed run may not have a usable state; say so instead of failing again
        return [f"unknown ({type(exc).__name__})"] * sim.cfg.n_envs


def _json_default(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

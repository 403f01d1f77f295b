"""`hybridsim run`: one episode -> a run folder of videos, labels, tables and run.json."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridsim.config import RunConfig, compose, save_yaml
from hybridsim.scenario.spec import Scenario, SpecError
from hybridsim.output.writers import TableWriter, VideoWriter, linear_to_srgb, to_uint8, write_json


@dataclass
class RunResult:
    out_dir: Path
    n_frames: int  # frames written per camera and environment
    n_envs: int
    status: str  # "ok" or "failed"
    files: list[str] = field(default_factory=list)  # relative to out_dir
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None


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


def run(scenario: str | Scenario | RunConfig = "default", overrides=(), **kwargs) -> RunResult:
    """Simulate one episode and write its run folder. See README "Outputs"."""
    cfg, base = resolve_config(scenario, overrides, **kwargs)
    out = _prepare_out_dir(cfg)
    from hybridsim.pipeline import Simulation

    t_start = time.perf_counter()
    save_yaml(cfg.to_dict(), out / "config.yaml")
    from hybridsim.refining import frame_stream

    sim = Simulation(cfg, base_dir=base)
    stream, refiner = frame_stream(cfg, sim)
    sink = RunSink(out, sim)
    status, error = "ok", None
    try:
        for frame in _progress(stream, sim.n_frames, cfg.progress, cfg.scenario.name):
            sink.write(frame)
    except Exception as exc:  # keep every finished frame, record the failure, re-raise
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        sink.close()
        sim.close()
        timings = dict(sim.timings, total_s=time.perf_counter() - t_start, write_s=sink.write_s)
        if refiner is not None:
            timings.update(refiner.timings)
        timings["frames_per_s"] = sink.n_frames / max(timings["total_s"], 1e-9)
        write_json(out / "run.json", _run_record(cfg, sim, sink, status, error, timings))
    return RunResult(out, sink.n_frames, cfg.n_envs, status, sorted(sink.files + ["run.json", "config.yaml"]),
                     timings, error)


def _prepare_out_dir(cfg: RunConfig) -> Path:
    out = cfg.output_dir
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise SpecError("out_dir", f"'{out}' exists and is not empty; pass overwrite=true or another out_dir")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


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

            self.labels = LabelWriter(out / "labels", sim)

    def _video(self, kind: str, cam, env: int, panels: int = 1) -> VideoWriter:
        suffix = "" if self.sim.cfg.n_envs == 1 else f"_env{env}"
        name = f"{kind}_{cam.name}{suffix}.mp4"
        if name not in self.videos:
            self.videos[name] = VideoWriter(self.out / name, self.sim.scenario.timing.fps, cam.width * panels,
                                            cam.height)
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
        for record in frame.events:
            self.events.write(json.dumps(record, default=_json_default) + "\n")
        self.events.flush()
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

    def close(self) -> None:
        self.events.close()
        for v in self.videos.values():
            v.close()
        self.poses.close()
        self.cams.close()
        if self.labels is not None:
            self.labels.close()
            self.files += self.labels.files


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hybridsim", "genesis-world", "torch", "gsplat", "diffusers", "numpy", "av", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_record(cfg, sim, sink, status, error, timings) -> dict:
    return {
        "status": status,
        "error": error,
        "scenario": cfg.scenario.name,
        "frames": sink.n_frames,
        "n_envs": cfg.n_envs,
        "fps": cfg.scenario.timing.fps,
        "seeds": {"root": cfg.scenario.seed, "episode": cfg.episode, "envs": sim.seeds},
        "require": _require_status(sim),
        "end_frame": [int(v) for v in getattr(sim, "end_frame", [])],
        "bodies": [{"slot": k, "entity": b.entity, "link": b.link} for k, b in enumerate(sim.world.bodies)],
        "files": sorted(sink.files),
        "timings": timings,
        "versions": _versions(),
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

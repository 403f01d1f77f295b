"""The refine stage of the frame loop: splat G-buffers -> refined RGB, block by block, streaming.

`StreamRefiner` keeps one `refine.Refiner` (model, KV cache, per-env noise) per camera and turns a
stream of `Frame`s into the same stream with `frame.refined[camera]` (uint8 [B, H, W, 3], sRGB)
attached. A block of F frames is refined as soon as its last frame arrives, so frames leave at most
F - 1 frames after they entered; the last, partial block is padded by repeating its last frame.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from hybridsim.config import RefineSettings
from hybridsim.seeding import derive_seed
from hybridsim.spec import SpecError


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("refine.device", f"'{device}' requested but CUDA is not available; use auto or cpu")
    return device


def load_model(settings: RefineSettings, device: str):
    """The shipped default model, or a saved refiner / diffusers Wan folder given in `weights`."""
    from refine import load_default_model
    from refine.model import CausalWanRefiner

    if settings.weights is None:
        from refine import DEFAULT_WEIGHTS_DIR

        model = load_default_model(device)
        model.source_dir = Path(DEFAULT_WEIGHTS_DIR)
        return model
    path = Path(settings.weights).expanduser()
    if not path.is_dir():
        raise SpecError("refine.weights", f"'{path}' is not a folder; give a folder written by "
                        "save_pretrained / hybridsim train-refiner, or null for the default model")
    config = (path / "config.json").read_text() if (path / "config.json").exists() else ""
    if '"WanTransformer3DModel"' in config:
        from refine import load_wan_checkpoint

        model, _report = load_wan_checkpoint(path, device=device)
    else:
        model = CausalWanRefiner.from_pretrained(path, device=device)
    model.source_dir = path
    return model


def sampler_config(settings: RefineSettings, weights_dir: Path | None = None):
    """The sampler: explicit `sigmas`, else `steps`, else the schedule saved beside the weights
    (sampler.json, written by train-refiner), else refine's default."""
    import json

    from refine import RefineError, SamplerConfig

    try:
        if settings.sigmas:
            return SamplerConfig(sigmas=tuple(settings.sigmas))
        if settings.steps is not None:
            return SamplerConfig(num_steps=settings.steps)
    except RefineError as err:
        raise SpecError("refine.sigmas" if settings.sigmas else "refine.steps", str(err)) from None
    saved = Path(weights_dir) / "sampler.json" if weights_dir else None
    if saved is not None and saved.is_file():
        data = json.loads(saved.read_text())
        return SamplerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    return SamplerConfig()


class StreamRefiner:
    """Refines every camera of a `Simulation` as its frames arrive."""

    def __init__(self, settings: RefineSettings, sim, model=None):
        import torch

        from refine import Refiner, SamplerConfig

        self.device = resolve_device(settings.device)
        self.model = model if model is not None else load_model(settings, self.device)
        spec = self.model.spec
        source = getattr(self.model, "source_dir", None)
        sampler = sampler_config(settings, Path(source) if source else None)
        self.sampler = sampler
        self.cameras = list(sim.cameras.values())
        for cam in self.cameras:
            if cam.width % spec.patch_size or cam.height % spec.patch_size:
                raise SpecError(f"scenario.cameras.{cam.name}.res",
                                f"{cam.width}x{cam.height} is not a multiple of the refiner's patch size "
                                f"{spec.patch_size}; use e.g. 128x128 or disable refine (refine.enabled=false)")
        self.refiners = {c.name: Refiner(self.model, sampler, device=self.device, height=c.height, width=c.width)
                         for c in self.cameras}
        self.frames_per_block = spec.frames_per_block
        self.n_envs = sim.cfg.n_envs
        self.seeds = list(sim.seeds)
        self.timings: dict[str, float] = defaultdict(float)
        self._torch = torch
        self.reset()

    def reset(self) -> None:
        for name, r in self.refiners.items():
            r.reset(self.n_envs, [derive_seed(s, "refine", name) % (2**63) for s in self.seeds])
        self._pending: list = []
        self._conds: dict[str, list] = {c.name: [] for c in self.cameras}

    def push(self, frame) -> list:
        """Add a frame; returns the frames of a finished block (refined attached), else []."""
        from hybridsim.refine_data import condition_from_gbuffer

        for cam in self.cameras:
            self._conds[cam.name].append(condition_from_gbuffer(frame.gbuffer[cam.name]))
        self._pending.append(frame)
        if len(self._pending) == self.frames_per_block:
            return self._run_block()
        return []

    def flush(self) -> list:
        """Refine a partial last block (padded with its last frame); returns its real frames."""
        if not self._pending:
            return []
        n = len(self._pending)
        for cam in self.cameras:
            self._conds[cam.name] += [self._conds[cam.name][-1]] * (self.frames_per_block - n)
        return self._run_block()[:n]

    def _run_block(self) -> list:
        torch = self._torch
        t0 = time.perf_counter()
        out = {}
        for cam in self.cameras:
            cond = torch.cat(self._conds[cam.name], 1)  # [B, F, 7, H, W]
            rgb = self.refiners[cam.name].push(cond)  # [B, F, 3, H, W] in [0, 1]
            out[cam.name] = (rgb.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
                             .cpu().numpy())  # [B, F, H, W, 3]
        frames = self._pending
        for k, frame in enumerate(frames):
            frame.refined = {name: np.ascontiguousarray(v[:, k]) for name, v in out.items()}
        self._pending = []
        self._conds = {c.name: [] for c in self.cameras}
        self.timings["refine_s"] += time.perf_counter() - t0
        self.timings["refine_blocks"] += 1
        return frames


def refined_frames(frames: Iterable, refiner: StreamRefiner) -> Iterator:
    """The same frames, in order, each with `.refined` set; delayed by at most F - 1 frames.

    If the upstream generator fails, the frames already received are still refined and yielded
    before the error is re-raised, so a writer keeps every finished frame.
    """
    try:
        for frame in frames:
            yield from refiner.push(frame)
    except BaseException:
        yield from refiner.flush()
        raise
    yield from refiner.flush()

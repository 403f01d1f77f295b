"""The refine stage of the frame loop: splat G-buffers -> refined RGB, block by block, streaming.

`StreamRefiner` keeps one `refine.Refiner` (model, KV cache, per-env noise) per camera and turns a
stream of `Frame`s into the same stream with `frame.refined[camera]` (uint8 [B, H, W, 3], sRGB)
attached. A block of F frames is refined as soon as its last frame arrives, so frames leave at most
F - 1 frames after they entered; the last, partial block is padded by repeating its last frame.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from hybridsim.config import RefineSettings
from hybridsim.scenario.seeding import derive_seed
from hybridsim.scenario.convert import short
from hybridsim.scenario.spec import SpecError


DEVICES = re.compile(r"(auto|cpu|mps|cuda(:[0-9]+)?)")


def check_device(device) -> None:
    """refine.device is auto, cpu, mps, cuda or cuda:N, and CUDA exists where one is named (torch is
    imported only then, so a typo is refused at once)."""
    if not isinstance(device, str) or not DEVICES.fullmatch(device):
        raise SpecError("refine.device", f"{short(device)} is not a device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SpecError("refine.device", f"'{device}' requested but CUDA is not available; use auto or cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SpecError("refine.device", f"'{device}': this machine has {torch.cuda.device_count()} CUDA "
                                             "device(s); use cuda:0 or auto")


def resolve_device(device: str) -> str:
    check_device(device)
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_weights_dir() -> Path:
    """refine.pretrained.DEFAULT_WEIGHTS_DIR, found without importing it (it imports torch)."""
    import importlib.util

    return Path(importlib.util.find_spec("refine").origin).parent / "weights"


@dataclass(frozen=True)
class WeightsInfo:
    """A weights folder whose files were checked (not loaded): its model config and kind."""

    folder: Path
    spec: object  # refine.ModelConfig
    wan: bool  # a diffusers WanTransformer3DModel folder (refine.load_wan_checkpoint)


def read_weights(settings: RefineSettings) -> WeightsInfo:
    """Check the weights folder's files without building the model: config.json (size, JSON, keys,
    types, buildable), the weights' safetensors headers (or a Wan index's shard names). SpecError
    naming refine.weights otherwise."""
    from refine import RefineError
    from refine.checkpoint import CONFIG_NAME, WEIGHTS_NAME, check_safetensors_header, model_config, read_json

    folder = default_weights_dir() if settings.weights is None else Path(settings.weights).expanduser()
    if settings.weights is None and not (folder / CONFIG_NAME).is_file():
        raise SpecError("refine.weights", f"no default weights in {folder}; train and install them with "
                        "`hybridsim train-refiner install=true`, give refine.weights=FOLDER, or refine.enabled=false")
    _check_folder(folder)
    try:
        cfg = read_json(folder / CONFIG_NAME, "config")
        if cfg.get("_class_name") == "WanTransformer3DModel":
            from refine.wan import wan_model_config, wan_shards

            spec = wan_model_config(cfg, folder / CONFIG_NAME)
            for shard in wan_shards(folder):
                check_safetensors_header(shard, "weight shard")
            return WeightsInfo(folder, spec, True)
        if cfg.get("_class_name", "CausalWanRefiner") != "CausalWanRefiner":
            raise RefineError(f"{folder / CONFIG_NAME} describes a {short(cfg['_class_name'])}, not a "
                              "CausalWanRefiner or WanTransformer3DModel")
        spec = model_config(cfg, folder / CONFIG_NAME)
        check_safetensors_header(folder / WEIGHTS_NAME, "weights")
        return WeightsInfo(folder, spec, False)
    except RefineError as err:
        raise SpecError("refine.weights", str(err)) from None


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        what = "it is a file" if folder.exists() else "it does not exist"
        raise SpecError("refine.weights", f"'{folder}' is not a folder ({what}); give a folder written by "
                        "save_pretrained / hybridsim train-refiner, or null for the default model")


def check_refine(cfg) -> WeightsInfo | None:
    """Every refine.* option and the weights folder, checked before Genesis or a model loads: the
    device, the folder's files, the sampler (steps / sigmas / noise / sampler.json), the cameras'
    sizes against the model's patch size, its condition layout against render.lit, and the memory
    the model and its KV caches will take for n_envs environments. None when refine is off."""
    s = cfg.refine
    check_device(s.device)
    if not s.enabled:
        sampler_config(s)  # still a typo in steps / sigmas / noise is worth a line
        return None
    if not cfg.render.enabled:
        raise SpecError("refine.enabled", "the refiner needs the splat render; set render.enabled=true "
                        "or refine.enabled=false")
    info = read_weights(s)
    sampler_config(s, info.folder)
    spec = info.spec
    layout = layout_of(spec.cond_channels)
    if layout == "lit" and not cfg.render.lit:
        raise SpecError("render.lit", "the refiner takes the lit splat render as input; set render.lit=true "
                        "(or use a refiner trained without it)")
    sizes = []
    for cam in cfg.scenario.cameras:
        if not all(isinstance(v, int) for v in cam.res):
            continue  # drawn per episode; StreamRefiner checks the drawn size
        w, h = cam.res
        if w % spec.patch_size or h % spec.patch_size:
            raise SpecError(f"scenario.cameras.{cam.name}.res", f"{w}x{h} is not a multiple of the refiner's patch "
                            f"size {spec.patch_size}; use e.g. 128x128 or disable refine (refine.enabled=false)")
        sizes.append((h, w))
    _check_refine_memory(spec, cfg.n_envs, sizes, info.folder)
    return info


def _check_refine_memory(spec, n_envs: int, sizes: list, folder: Path) -> None:
    from refine import RefineError
    from refine.checkpoint import check_fits, model_bytes, runtime_bytes

    try:
        check_fits(model_bytes(spec), f"the model in {folder}", "use a smaller model")
    except RefineError as err:
        raise SpecError("refine.weights", str(err)) from None
    need = model_bytes(spec) + sum(runtime_bytes(spec, n_envs, h, w) for h, w in sizes)
    try:
        check_fits(need, f"refining {n_envs} env(s) x {len(sizes)} camera(s) with the model in {folder}",
                   "lower n_envs or the camera resolution, or refine.enabled=false")
    except RefineError as err:
        raise SpecError("n_envs", str(err)) from None


def load_model(settings: RefineSettings, device: str):
    """-> (model, folder): the shipped default model, or a saved refiner / diffusers Wan folder
    given in `weights`. The folder is where a saved sampler schedule (sampler.json) may sit.
    The loaders check the folder's files before allocating (refine.checkpoint); `check_refine`
    does the same checks earlier, without torch, for `hybridsim run`."""
    from refine import DEFAULT_WEIGHTS_DIR, load_default_model
    from refine.checkpoint import CONFIG_NAME, read_json
    from refine.model import CausalWanRefiner

    if settings.weights is None:
        return load_default_model(device), Path(DEFAULT_WEIGHTS_DIR)
    path = Path(settings.weights).expanduser()
    _check_folder(path)
    config = read_json(path / CONFIG_NAME, "config") if (path / CONFIG_NAME).is_file() else {}
    if config.get("_class_name") == "WanTransformer3DModel":
        from refine import load_wan_checkpoint

        model, _report = load_wan_checkpoint(path, device=device)
        return model, path
    return CausalWanRefiner.from_pretrained(path, device=device), path


def condition_from_gbuffer(gb, camera=None, lighting=None):  # -> Tensor [B, 1, C, H, W] float32
    """Refiner condition channels from one camera's G-buffer (C = 1).

    The splat render is linear; the target (Genesis' render, and every video we write) is sRGB,
    so the coarse RGB goes in sRGB-encoded: then a perfect coarse render is exactly the target.
    camera (a pipeline.CameraParams) and lighting (a spec.Lighting) add the 7 shading-cue channels
    (refine.conditioning): 14 channels in all, else 7.
    """
    import torch

    from refine import encode_condition
    from refine.conditioning import Lights
    from render import linear_to_srgb

    extra = {}
    if camera is not None and lighting is not None:
        extra = dict(K=torch.as_tensor(np.asarray(camera.K, dtype=np.float32)),
                     viewmat=torch.as_tensor(np.asarray(camera.viewmat, dtype=np.float32)),
                     lights=Lights(tuple(lighting.direction), tuple(lighting.color), float(lighting.intensity),
                                   tuple(lighting.ambient)))
    return encode_condition(linear_to_srgb(gb.rgb), gb.depth, gb.alpha, gb.flow, **extra)


def condition_layout(model) -> str:
    """Which condition a model takes, by its channel count: "gbuffer" (7), "shading" (14: G-buffer +
    depth normals and the raster's light) or "lit" (21: the lit splat render and its inputs)."""
    return layout_of(model.spec.cond_channels)


def layout_of(channels: int) -> str:
    from refine.config import COND_CHANNELS, LIT_CHANNELS, SHADING_CHANNELS  # refine.conditioning imports torch

    layouts = {COND_CHANNELS: "gbuffer", COND_CHANNELS + SHADING_CHANNELS: "shading", LIT_CHANNELS: "lit"}
    if channels not in layouts:
        raise SpecError("refine.weights", f"the model takes {channels} condition channels; hybridsim feeds "
                        f"{', '.join(map(str, layouts))} (refine.conditioning)")
    return layouts[channels]


def needs_shading(model) -> bool:
    """Whether the model takes the 14-channel condition (with shading cues)."""
    return condition_layout(model) == "shading"


def sampler_config(settings: RefineSettings, weights_dir: Path | None = None):
    """The sampler: explicit `sigmas`, else `steps`, else the schedule saved beside the weights
    (sampler.json, written by train-refiner), else refine's default; `noise` overrides the
    noise mode of whichever it is."""
    import dataclasses

    from refine import RefineError, SamplerConfig

    try:
        if settings.sigmas:
            cfg = SamplerConfig(sigmas=tuple(settings.sigmas))
        elif settings.steps is not None:
            cfg = SamplerConfig(num_steps=settings.steps)
        else:
            cfg = None
    except RefineError as err:
        raise SpecError("refine.sigmas" if settings.sigmas else "refine.steps", str(err)) from None
    saved = Path(weights_dir) / "sampler.json" if weights_dir else None
    if saved is not None and saved.is_file():
        own = saved_sampler(saved)
        # clean_pass is how the model was trained to read its context: it holds whatever the schedule
        cfg = own if cfg is None else dataclasses.replace(cfg, clean_pass=own.clean_pass)
    cfg = cfg or SamplerConfig()
    if settings.noise is not None:
        try:
            cfg = dataclasses.replace(cfg, noise=settings.noise)
        except RefineError as err:
            raise SpecError("refine.noise", str(err)) from None
    return cfg


_SAMPLER_TYPES = {"num_steps": (int,), "sigma_max": (int, float), "shift": (int, float), "sigmas": (list, type(None)),
                  "noise": (str,), "clean_pass": (bool,)}


def saved_sampler(path: Path):
    """The SamplerConfig of a sampler.json (untrusted: size, keys and types checked; SpecError at
    refine.weights naming the file otherwise)."""
    from refine import RefineError, SamplerConfig
    from refine.checkpoint import read_json

    try:
        data = read_json(path, "sampler schedule")
        unknown = sorted(k for k in data if k not in _SAMPLER_TYPES)
        if unknown:
            raise RefineError(f"sampler schedule {path} has unknown keys {[short(k) for k in unknown[:4]]}; "
                              f"its keys are {sorted(_SAMPLER_TYPES)} (re-save it with hybridsim train-refiner)")
        for k, v in data.items():
            if (isinstance(v, bool) and k != "clean_pass") or not isinstance(v, _SAMPLER_TYPES[k]) or \
                    (k == "sigmas" and v is not None and not all(isinstance(x, (int, float)) for x in v)):
                raise RefineError(f"sampler schedule {path}: {k} has the wrong type ({type(v).__name__}); "
                                  "e.g. {\"num_steps\": 3, \"sigma_max\": 0.75, \"noise\": \"static\"}")
        try:
            return SamplerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except RefineError as err:
            raise RefineError(f"sampler schedule {path}: {err}") from None
    except RefineError as err:
        raise SpecError("refine.weights", str(err)) from None


class StreamRefiner:
    """Refines every camera of a `Simulation` as its frames arrive."""

    def __init__(self, settings: RefineSettings, sim, model=None, weights_dir: Path | None = None):
        """model: an already loaded refiner (else `settings.weights` is loaded); weights_dir: the
        folder whose sampler.json applies when settings name no schedule."""
        from refine import Refiner

        self.device = resolve_device(settings.device)
        if model is None:
            model, weights_dir = load_model(settings, self.device)
        self.model = model
        spec = model.spec
        sampler = sampler_config(settings, weights_dir)
        self.cameras = list(sim.cameras.values())
        for cam in self.cameras:
            if cam.width % spec.patch_size or cam.height % spec.patch_size:
                raise SpecError(f"scenario.cameras.{cam.name}.res",
                                f"{cam.width}x{cam.height} is not a multiple of the refiner's patch size "
                                f"{spec.patch_size}; use e.g. 128x128 or disable refine (refine.enabled=false)")
        self.refiners = {c.name: Refiner(model, sampler, device=self.device, height=c.height, width=c.width)
                         for c in self.cameras}
        self.frames_per_block = spec.frames_per_block
        self.n_envs = sim.cfg.n_envs
        self.seeds = list(sim.seeds)
        self.layout = condition_layout(model)
        if self.layout == "lit" and not sim.cfg.render.lit:
            raise SpecError("render.lit", "the refiner takes the lit splat render as input; set render.lit=true "
                            "(or use a refiner trained without it)")
        self.lighting = sim.scenario.lighting if self.layout == "shading" else None
        self.sim = sim  # its material table (Simulation.materials) feeds the lit layout
        self.timings: dict[str, float] = defaultdict(float)
        self.reset()

    def reset(self) -> None:
        for name, r in self.refiners.items():
            r.reset(self.n_envs, [derive_seed(s, "refine", name) % (2**63) for s in self.seeds])
        self._pending: list = []
        self._conds: dict[str, list] = {c.name: [] for c in self.cameras}
        self.episodes = np.zeros(self.n_envs, dtype=np.int64)  # per-env episode tag (reset_rows bumps it)
        self._tags: list = []  # the pending frames' tags, [B] each

    def reset_rows(self, rows, seeds) -> None:
        """Envs `rows` start new episodes (seeds: their new episode seeds) from the next collected
        frame on, while the other envs' streams go on (interactive autoreset): each camera's
        refiner restarts those rows' noise and keeps their new frames apart from the old ones."""
        rows = [int(r) for r in rows]
        self.episodes[rows] += 1
        for i, r in enumerate(rows):
            self.seeds[r] = seeds[i]
        for name, r in self.refiners.items():
            r.reset_rows(rows, [derive_seed(s, "refine", name) % (2**63) for s in seeds])

    def push(self, frame) -> list:
        """Add a frame; returns the frames of a finished block (refined attached), else []."""
        block = self.collect(frame)
        return self.refine_block(block) if block is not None else []

    def flush(self) -> list:
        """Refine a partial last block (padded with its last frame); returns its real frames."""
        block = self.take_partial()
        return self.refine_block(block) if block is not None else []

    def collect(self, frame) -> _Block | None:
        """Take a frame's condition now (cameras may move in place later); a full block -> it."""
        from hybridsim.appearance import lit_condition

        for cam in self.cameras:
            if self.layout == "lit":
                cond = lit_condition(frame.gbuffer[cam.name], frame.lit[cam.name], frame.cameras[cam.name],
                                     self.sim.materials)
            else:
                cond = condition_from_gbuffer(frame.gbuffer[cam.name], frame.cameras[cam.name], self.lighting)
            self._conds[cam.name].append(cond)
        self._pending.append(frame)
        self._tags.append(self.episodes.copy())
        return self._take() if len(self._pending) == self.frames_per_block else None

    def take_partial(self) -> _Block | None:
        """The last, partial block padded by repeating its last frame (None if nothing is pending)."""
        if not self._pending:
            return None
        pad = self.frames_per_block - len(self._pending)
        for cam in self.cameras:
            self._conds[cam.name] += [self._conds[cam.name][-1]] * pad
        self._tags += [self._tags[-1]] * pad
        return self._take()

    def _take(self) -> _Block:
        block = _Block(self._pending, self._conds, self._tags)
        self._pending, self._tags = [], []
        self._conds = {c.name: [] for c in self.cameras}
        return block

    def step(self, frame) -> list:
        """Interactive use: give `frame` a refined image now, not up to F - 1 frames later.

        When the frame completes a block, the block is refined as `push` does (the block's earlier
        frames get their final images) and its frames are returned. Otherwise `frame.refined` is a
        provisional refinement of the unfinished block (refine.Refiner.preview), [] is returned,
        and the KV cache is left as it was: the final frames equal the offline stream's, bit for bit.
        """
        import torch

        block = self.collect(frame)
        if block is not None:
            return self.refine_block(block)
        t0 = time.perf_counter()
        refined = {}
        tags = _episode_tags(self._tags)
        for cam in self.cameras:
            rgb = self.refiners[cam.name].preview(torch.cat(self._conds[cam.name], 1), tags)  # [B, k, 3, H, W]
            refined[cam.name] = np.ascontiguousarray(_to_uint8(rgb)[:, -1])  # [B, H, W, 3]
        frame.refined = refined
        self.timings["preview_s"] += time.perf_counter() - t0
        self.timings["preview_frames"] += 1
        return []

    def save(self) -> StreamState:
        """The rollout state (every camera's cache and noise streams, the unfinished block)."""
        return StreamState({n: r.snapshot() for n, r in self.refiners.items()}, list(self._pending),
                           {n: list(c) for n, c in self._conds.items()}, self.episodes.copy(), list(self._tags),
                           list(self.seeds))

    def restore(self, state: StreamState) -> None:
        """Back to `save()`'s state: the following blocks are refined bit-identically."""
        for name, r in self.refiners.items():
            r.restore(state.refiners[name])
        self._pending = list(state.pending)
        self._conds = {n: list(c) for n, c in state.conds.items()}
        self.episodes, self._tags, self.seeds = state.episodes.copy(), list(state.tags), list(state.seeds)

    def refine_block(self, block: _Block) -> list:
        """Run the model on one block; -> its real frames with `.refined` set. Blocks must come in
        order (each camera's KV cache advances)."""
        import torch

        t0 = time.perf_counter()
        out = {}
        tags = _episode_tags(block.tags)
        for cam in self.cameras:
            cond = torch.cat(block.conds[cam.name], 1)  # [B, F, C, H, W]
            rgb = self.refiners[cam.name].push(cond, tags)  # [B, F, 3, H, W] in [0, 1]
            out[cam.name] = _to_uint8(rgb)  # [B, F, H, W, 3]
        for k, frame in enumerate(block.frames):
            frame.refined = {name: np.ascontiguousarray(v[:, k]) for name, v in out.items()}
        self.timings["refine_s"] += time.perf_counter() - t0
        self.timings["refine_blocks"] += 1
        return block.frames


def _to_uint8(rgb) -> np.ndarray:  # [B, T, 3, H, W] float in [0, 1] -> [B, T, H, W, 3] uint8
    import torch

    return rgb.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()


@dataclass
class StreamState:
    """StreamRefiner.save(): per camera a refine.RefinerState, and the frames of the unfinished block."""

    refiners: dict
    pending: list
    conds: dict
    episodes: np.ndarray  # [B] per-env episode tags
    tags: list  # the pending frames' tags
    seeds: list  # per-env seeds of the current episodes


def _episode_tags(tags: list):
    """The frames' per-env tags [F] x [B] -> [B, F] long tensor (None when every tag is 0: the
    refiner then uses its fast path without a mask check)."""
    import torch

    t = np.stack(tags, 1)
    return None if not t.any() else torch.as_tensor(t, dtype=torch.long)


@dataclass
class _Block:
    """One block handed to the model: its real frames and, per camera, F conditions [B, 1, C, H, W]."""

    frames: list
    conds: dict[str, list]
    tags: list  # per frame [B] episode tags


def refined_frames(frames: Iterable, refiner: StreamRefiner, overlap: bool = False) -> Iterator:
    """The same frames, in order, each with `.refined` set; delayed by at most F - 1 frames
    (overlap=True: at most 2F - 1, see `overlapped_frames`).

    If the upstream generator fails, the frames already received are still refined and yielded
    before the error is re-raised, so a writer keeps every finished frame.
    """
    if overlap:
        yield from overlapped_frames(frames, refiner)
        return
    try:
        for frame in frames:
            yield from refiner.push(frame)
    except BaseException:
        yield from refiner.flush()
        raise
    yield from refiner.flush()


_STOP = object()


def overlapped_frames(frames: Iterable, refiner: StreamRefiner) -> Iterator:
    """`refined_frames` with the model on a worker thread: while it refines block k, this thread
    steps physics, renders splats and writes outputs for block k + 1 (torch releases the GIL in
    its kernels, so the stages use different cores). Same frames, same order, same pixels.

    One block is in the worker's hands at a time: the next waits until it is done, so a slow
    refiner holds the simulation back instead of piling up frames, and a frame leaves at most
    2F - 1 frames after it entered. A worker error is raised here (as it is, with its traceback);
    an upstream error still gets every received frame refined first.
    """
    inbox: queue.Queue = queue.Queue()  # blocks of conditions, or _STOP
    free = threading.Semaphore(1)  # released by the worker when its block is done
    outbox: queue.Queue = queue.Queue()  # ("frames", list) | ("error", exc) | ("done", None)

    def work() -> None:
        try:
            while (block := inbox.get()) is not _STOP:
                outbox.put(("frames", refiner.refine_block(block)))
                free.release()
        except BaseException as err:  # handed to the consumer thread
            outbox.put(("error", err))
            return
        outbox.put(("done", None))

    worker = threading.Thread(target=work, name="hybridsim-refiner", daemon=True)
    worker.start()
    finished = False

    def drain(wait: bool) -> Iterator:
        nonlocal finished
        while not finished:
            try:
                kind, item = outbox.get(timeout=0.05) if wait else outbox.get_nowait()
            except queue.Empty:
                if wait and not worker.is_alive() and outbox.empty():
                    raise RuntimeError("the refiner thread stopped without a result") from None
                if wait:
                    continue
                return
            if kind == "error":
                finished = True
                raise item
            if kind == "done":
                finished = True
                return
            yield from item

    def hand_on(block) -> Iterator:
        while not free.acquire(timeout=0.05):  # a failed worker frees nothing: surface its error
            yield from drain(wait=False)
            if finished:
                return
        inbox.put(block)

    try:
        upstream_error = None
        try:
            for frame in frames:
                block = refiner.collect(frame)
                if block is not None:
                    yield from hand_on(block)
                yield from drain(wait=False)
        except GeneratorExit:
            raise
        except BaseException as err:  # keep what was received: refine it, then re-raise
            upstream_error = err
        last = refiner.take_partial()
        if last is not None:
            yield from hand_on(last)
        inbox.put(_STOP)
        yield from drain(wait=True)
        if upstream_error is not None:
            raise upstream_error
    finally:  # also when the consumer stops early (GeneratorExit): do not leave the worker waiting
        if worker.is_alive():
            while True:  # drop blocks not started; the one being refined finishes
                try:
                    inbox.get_nowait()
                except queue.Empty:
                    break
            inbox.put(_STOP)
            worker.join()


def make_refiner(cfg, sim) -> StreamRefiner | None:
    """The episode's StreamRefiner, or None when cfg.refine.enabled is false."""
    if not cfg.refine.enabled:
        return None
    if sim.splats is None:
        raise SpecError("refine.enabled", "the refiner needs the splat render; set render.enabled=true "
                        "or refine.enabled=false")
    t0 = time.perf_counter()
    refiner = StreamRefiner(cfg.refine, sim)
    sim.timings["build_refiner_s"] = time.perf_counter() - t0
    return refiner


def frame_stream(cfg, sim) -> tuple[Iterator, StreamRefiner | None]:
    """The episode's frames, refined when cfg.refine.enabled (then also the refiner, for its timings)."""
    refiner = make_refiner(cfg, sim)
    if refiner is None:
        return sim.frames(), None
    return refined_frames(sim.frames(), refiner, overlap=cfg.refine.overlap), refiner

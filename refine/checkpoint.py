"""Strict, local, safetensors-only loading of refiner folders, and atomic file helpers.

A weights folder is untrusted input. Before anything is allocated, its config.json is read with a
size limit, every value is checked against the model's config fields (`model_config`) and the
model's size is estimated from the config alone (`model_bytes`) and compared with the memory this
machine has (`check_fits`): a config that asks for a huge model is refused with one line instead of
allocating gigabytes first. torch loads lazily, so these checks are cheap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from refine.config import ModelConfig
from refine.errors import RefineError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
MAX_JSON_BYTES = 1 << 20  # config.json, sampler.json, a shard index: a few KiB in practice
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit on its JSON header


def read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    """Load a safetensors file on CPU; missing or corrupt -> RefineError."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise RefineError(f"{what} {path} is missing; re-save it (save_pretrained / training checkpoint)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises several types for truncated/garbled files
        raise RefineError(f"{what} {path} is corrupt or not safetensors ({type(err).__name__}: {err}); "
                          "re-save it or restore it from a backup") from err


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file of at most `max_bytes`; RefineError (never quoting the file) otherwise."""
    if not path.is_file():
        raise RefineError(f"{what} {path} is missing; pass a folder written by save_pretrained")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RefineError(f"{what} {path} is {size} bytes, above the {max_bytes}-byte limit; is it the right file?")
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:  # JSONDecodeError's str quotes no content; UnicodeDecodeError's does
        why = f"line {err.lineno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise RefineError(f"{what} {path} is not valid JSON ({why}); re-save the folder") from None
    if not isinstance(data, dict):
        raise RefineError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_state_dict(model: "torch.nn.Module", state: dict[str, Tensor], source: Path) -> None:
    """Exact key and shape match, or RefineError naming the first differences."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise RefineError(f"weights in {source} do not match its config: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}, shape mismatches {wrong[:4]}; save config and "
                          "weights together with save_pretrained")


def load_refiner_folder(cls, folder: Path, device: "str | torch.device" = "cpu"):
    """Build `cls` from folder/config.json and load folder/diffusion_pytorch_model.safetensors."""
    if not folder.is_dir():
        raise RefineError(f"{folder} is not a directory; pass a local folder written by save_pretrained "
                          "(nothing is downloaded)")
    config = read_json(folder / CONFIG_NAME, "config")
    name = config.get("_class_name")
    if name is not None and name != cls.__name__:
        raise RefineError(f"{folder} holds a {name}, not a {cls.__name__}; for Wan checkpoints use "
                          "refine.load_wan_checkpoint(folder)")
    init_keys = set(cls.extract_init_dict(config)[0])
    bad = sorted(k for k in config if not k.startswith("_") and k not in init_keys)
    if bad:
        raise RefineError(f"config {folder / CONFIG_NAME} has unknown keys {bad}; it was not written by "
                          f"this version of {cls.__name__}")
    if cls.__name__ == "CausalWanRefiner":  # typed, validated and sized before anything is allocated
        check_fits(model_bytes(model_config(config, folder / CONFIG_NAME)), f"the model in {folder}")
    try:
        model = cls.from_config(config)
    except RefineError as err:
        raise RefineError(f"config {folder / CONFIG_NAME} is invalid: {err}") from err
    except (TypeError, ValueError) as err:
        raise RefineError(f"config {folder / CONFIG_NAME} is invalid ({err}); re-save the folder") from err
    state = read_safetensors(folder / WEIGHTS_NAME, "weights")
    check_state_dict(model, state, folder / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- checks before building


def model_config(config: dict, source: Path) -> ModelConfig:
    """The ModelConfig a CausalWanRefiner config.json describes: unknown keys and values of the wrong
    type are refused (naming the key), then ModelConfig's own checks run. Nothing is built."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
    if unknown:
        raise RefineError(f"config {source} has unknown keys {unknown[:6]}; it was not written by this version "
                          "of CausalWanRefiner")
    kwargs = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        want = type(fields[key].default)
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int) and not isinstance(value, bool) if want is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              if want is float else isinstance(value, want))
        if not ok:
            raise RefineError(f"config {source}: {key} must be {want.__name__}, got {type(value).__name__}; "
                              "re-save the folder with save_pretrained")
        kwargs[key] = value
    try:
        return ModelConfig(**kwargs)
    except RefineError as err:
        raise RefineError(f"config {source} is invalid, the model cannot be built: {err}") from None


def model_bytes(spec: ModelConfig) -> int:
    """float32 bytes of a CausalWanRefiner's parameters and buffers, counted from its layer shapes
    (refine/model.py): every Linear, the patch embedding, the pixel head and the rotary tables."""
    D, F, p = spec.dim, spec.ffn_dim, spec.patch_size
    attn = 4 * (D * D + D) + 2 * D  # q, k, v, out projections and the q/k RMS norms
    block = attn + 2 * F * D + F + D + 6 * D  # self-attention, feed-forward, modulation table
    if spec.cross_attn_tokens:
        block += attn + 2 * D
    out = spec.head_channels or spec.out_channels
    n = spec.num_layers * block
    n += spec.in_channels * p * p * D + D  # patch embedding
    n += spec.freq_dim * D + D + D * D + D + 6 * D * D + 6 * D  # time embedder and projection
    n += D * out * (1 if spec.upsamples_tokens else p * p) + 2 * D + spec.cross_attn_tokens * D
    if spec.head_channels:
        n += 9 * spec.head_hidden * (spec.head_channels + spec.in_channels + spec.out_channels)
    rope = 2 * spec.rope_max_seq_len * spec.attention_head_dim  # float64 cos/sin, half the dims each
    return 4 * n + 8 * rope


def runtime_bytes(spec: ModelConfig, n_envs: int, height: int, width: int) -> int:
    """float32 bytes one refiner (one camera) holds while running: its KV cache for `n_envs`
    environments at height x width, plus one block's attention scores and feed-forward activations."""
    tokens = (height // spec.patch_size) * (width // spec.patch_size)
    block = spec.frames_per_block * tokens
    cache = 2 * spec.num_layers * n_envs * spec.cache_frames * tokens * spec.dim
    scores = n_envs * spec.num_attention_heads * block * (spec.cache_frames + spec.frames_per_block) * tokens
    ffn = n_envs * block * (spec.ffn_dim + 4 * spec.dim)
    return 4 * (cache + scores + ffn)


def available_bytes() -> int:
    """Memory this machine can still give (MemAvailable; the physical total where that is unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_fits(need: int, what: str, fix: str = "use a smaller model") -> None:
    """RefineError unless `need` bytes fit in the memory available now."""
    have = available_bytes()
    if need > have:
        raise RefineError(f"{what} needs about {need / 2**30:.1f} GiB (estimated from its config) but "
                          f"{have / 2**30:.1f} GiB are available; {fix}")


def check_safetensors_header(path: Path, what: str) -> int:
    """Read only a safetensors file's header (8-byte length + JSON): RefineError when it is missing,
    truncated or not safetensors. Returns the bytes its tensors take."""
    if not path.is_file():
        raise RefineError(f"{what} {path} is missing; re-save it (save_pretrained / training checkpoint)")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8):
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise RefineError(f"{what} {path} is corrupt or not safetensors ({type(err).__name__}); re-save it "
                          "or restore it from a backup") from None
    data = max(ends, default=0)
    if 8 + n + data > size:
        raise RefineError(f"{what} {path} is truncated ({size} bytes, its header describes {8 + n + data}); "
                          "re-save it or restore it from a backup")
    return data

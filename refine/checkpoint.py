"""Strict, local, safetensors-only loading of refiner folders, and atomic file helpers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from refine.errors import RefineError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


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


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RefineError(f"{what} {path} is missing; pass a folder written by save_pretrained")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RefineError(f"{what} {path} is not valid JSON ({err}); re-save the folder") from err
    if not isinstance(data, dict):
        raise RefineError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_state_dict(model: torch.nn.Module, state: dict[str, Tensor], source: Path) -> None:
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


def load_refiner_folder(cls, folder: Path, device: str | torch.device = "cpu"):
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

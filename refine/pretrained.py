"""The project's own default weights, shipped as package data in refine/weights/ (if trained)."""

from __future__ import annotations

from pathlib import Path

import torch

from refine.errors import RefineError

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_default_model(device: str | torch.device = "cpu"):
    """CausalWanRefiner from refine/weights/ (config.json + diffusion_pytorch_model.safetensors)."""
    from refine.model import CausalWanRefiner

    if not (DEFAULT_WEIGHTS_DIR / "config.json").is_file():
        raise RefineError(f"no default weights in {DEFAULT_WEIGHTS_DIR}; train and install one with "
                          "`hybridsim train-refiner install=true` (or refine.train + model.save_pretrained there)")
    return CausalWanRefiner.from_pretrained(DEFAULT_WEIGHTS_DIR, device=device)

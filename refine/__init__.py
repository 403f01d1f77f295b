"""refine: causal autoregressive video-diffusion refiner (Wan-style DiT, KV cache, few-step sampler).

Note: `train` and `evaluate` are also submodule names; after `import refine.train` the package
attribute is the module. Import the functions from their modules (`from refine.train import train`).

Leaf package: imports torch, numpy, diffusers, safetensors, tqdm and nothing from physics,
render or hybridsim. `import refine` is cheap: the modelling code (and diffusers) load on first
use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from refine.config import ModelConfig, SamplerConfig, TrainConfig
from refine.errors import RefineError

_LAZY = {
    "CausalWanRefiner": "refine.model",
    "KVCache": "refine.cache",
    "FrameLayout": "refine.layout",
    "plan_attention": "refine.layout",
    "Refiner": "refine.refiner",
    "FewStepSampler": "refine.sampler",
    "sigma_schedule": "refine.sampler",
    "encode_condition": "refine.conditioning",
    "Lights": "refine.conditioning",
    "load_wan_checkpoint": "refine.wan",
    "WanLoadReport": "refine.wan",
    "train": "refine.train",
    "TrainResult": "refine.train",
    "evaluate": "refine.evaluate",
    "load_default_model": "refine.pretrained",
    "DEFAULT_WEIGHTS_DIR": "refine.pretrained",
    "run_benchmarks": "refine.bench",
    "EvalResult": "refine.evaluate",
    "FrameAutoencoder": "refine.autoencoder",
}

__all__ = ["ModelConfig", "SamplerConfig", "TrainConfig", "RefineError", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from refine.cache import KVCache
    from refine.conditioning import Lights, encode_condition
    from refine.evaluate import EvalResult, evaluate
    from refine.layout import FrameLayout, plan_attention
    from refine.bench import run_benchmarks
    from refine.model import CausalWanRefiner
    from refine.pretrained import DEFAULT_WEIGHTS_DIR, load_default_model
    from refine.refiner import Refiner
    from refine.sampler import FewStepSampler, sigma_schedule
    from refine.train import TrainResult, train
    from refine.autoencoder import FrameAutoencoder
    from refine.wan import WanLoadReport, load_wan_checkpoint


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'refine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""Load a Wan-architecture checkpoint (diffusers WanTransformer3DModel folder) into the causal model.

Mapping (documented in NOTES.md):
- every block's self-attention, norms, FFN and modulation tables, the time embedder/projection,
  norm_out, proj_out and scale_shift_table copy over by name unchanged;
- patch_embedding: the checkpoint's first `out_channels` input channels are the noisy channels;
  any further ones (Wan i2v / Fun-control conditioning) map onto our first condition channels;
  our remaining condition channels are zero-initialised, so the loaded model ignores them until
  fine-tuned;
- text cross-attention: Wan pads prompts with zero rows, so we keep attn2 with a one-token null
  context = text_embedder(zeros(text_dim)), the embedding of a padding row. Every padding row is
  identical, so this equals Wan run on an all-padding prompt exactly. keep_cross_attention=False
  drops attn2 instead (cheaper, changes outputs until fine-tuned);
- image cross-attention (add_k_proj/add_v_proj/norm_added_k, image_embedder) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refine.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, check_fits, check_safetensors_header, model_bytes, read_json,
                               read_safetensors)
from refine.config import ModelConfig
from refine.errors import RefineError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
MAX_INDEX_BYTES = 16 << 20  # a shard index maps every tensor name to a file: ~100 KiB for a 14B Wan


@dataclass(frozen=True)
class WanLoadReport:
    """What happened to each checkpoint tensor."""

    copied: tuple[str, ...]
    ignored: tuple[str, ...]  # checkpoint tensors with no place in the causal model
    zero_initialised: tuple[str, ...]  # model tensors (or channel ranges) set to zero


def wan_shards(folder: Path) -> list[Path]:
    """The weight files of a Wan folder: the shards its index names (each confined to the folder:
    an index is untrusted, and a name such as '../x' or '/etc/x' must not open a file outside it),
    else the single weights file. Only names are checked here; read_safetensors reads them."""
    index = folder / INDEX_NAME
    if not index.is_file():
        return [folder / WEIGHTS_NAME]
    weight_map = read_json(index, "shard index", MAX_INDEX_BYTES).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise RefineError(f"shard index {index} has no weight_map of tensor name -> shard file name; re-save the folder")
    root = folder.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        path = (folder / name).resolve()
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or path.parent != root:
            raise RefineError(f"shard index {index} names the shard {name[:80]!r}, which is not a file directly "
                              "inside the weights folder; shard names must be plain file names in that folder")
        shards.append(folder / name)
    return shards


def _read_wan_weights(folder: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for shard in wan_shards(folder):
        state.update(read_safetensors(shard, "weight shard" if shard.name != WEIGHTS_NAME else "Wan weights"))
    return state


def _model_kwargs(cfg: dict, cond_channels: int, keep_cross: bool, overrides: dict) -> dict:
    try:
        return _kwargs(cfg, cond_channels, keep_cross, overrides)
    except KeyError as err:
        raise RefineError(f"Wan config lacks {err}; is it a Wan transformer's config.json?") from None
    except (TypeError, ValueError) as err:  # int("abc"), int([1]), tuple(5): a value of the wrong type
        raise RefineError(f"Wan config has a value of the wrong type ({type(err).__name__}); re-save it from "
                          "diffusers' WanTransformer3DModel") from None


def _kwargs(cfg: dict, cond_channels: int, keep_cross: bool, overrides: dict) -> dict:
    patch = tuple(cfg.get("patch_size", (1, 2, 2)))
    if len(patch) != 3 or patch[0] != 1 or patch[1] != patch[2]:
        raise RefineError(f"Wan patch_size {str(patch)[:40]} is not (1, p, p); only spatial square patches load")
    out_ch = int(cfg.get("out_channels") or cfg.get("in_channels", 16))
    extra = int(cfg.get("in_channels", 16)) - out_ch
    if extra < 0 or extra > cond_channels:
        raise RefineError(f"checkpoint has {cfg.get('in_channels')} input and {out_ch} output channels, "
                          f"i.e. {extra} conditioning channels; pass cond_channels >= {max(extra, 0)}")
    kwargs = dict(patch_size=patch[1], num_attention_heads=int(cfg["num_attention_heads"]),
                  attention_head_dim=int(cfg["attention_head_dim"]), cond_channels=cond_channels,
                  out_channels=out_ch, freq_dim=int(cfg.get("freq_dim", 256)), ffn_dim=int(cfg["ffn_dim"]),
                  num_layers=int(cfg["num_layers"]), eps=float(cfg.get("eps", 1e-6)),
                  cross_attn_tokens=1 if keep_cross else 0,
                  cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
                  rope_max_seq_len=int(cfg.get("rope_max_seq_len", 1024)), residual_space=False)
    kwargs.update(overrides)
    return kwargs


def wan_model_config(cfg: dict, source: Path, cond_channels: int = 7, keep_cross_attention: bool = True,
                     **overrides) -> ModelConfig:
    """The causal model's config for a Wan config.json (what load_wan_checkpoint builds), checked
    and typed, without building it. RefineError naming the problem otherwise."""
    if cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise RefineError(f"{source} holds a {str(cfg['_class_name'])[:60]}, not a WanTransformer3DModel")
    kwargs = _model_kwargs(cfg, cond_channels, keep_cross_attention, overrides)
    try:
        return ModelConfig(**kwargs)
    except RefineError as err:
        raise RefineError(f"Wan config {source} is invalid, the model cannot be built: {err}") from None
    except TypeError as err:  # an unknown override
        raise RefineError(f"Wan config {source}: {err}") from None


def _null_context(state: dict[str, Tensor]) -> Tensor:
    """text_embedder applied to one all-zero (padding) text row -> [1, 1, D]."""
    import torch
    import torch.nn.functional as Fn

    w1, b1 = state["condition_embedder.text_embedder.linear_1.weight"], state["condition_embedder.text_embedder.linear_1.bias"]
    w2, b2 = state["condition_embedder.text_embedder.linear_2.weight"], state["condition_embedder.text_embedder.linear_2.bias"]
    zero = torch.zeros(1, w1.shape[1], dtype=w1.dtype)
    return Fn.linear(Fn.gelu(Fn.linear(zero, w1, b1), approximate="tanh"), w2, b2)[None]


def load_wan_checkpoint(folder: str | Path, *, cond_channels: int = 7, keep_cross_attention: bool = True,
                        device: "str | torch.device" = "cpu", **overrides):
    """Load a local diffusers WanTransformer3DModel folder into a CausalWanRefiner.

    overrides: further CausalWanRefiner config (frames_per_block, sink_frames, window_frames,
    sample_height, sample_width, residual_space, ...). Returns (model, WanLoadReport).
    """
    from refine.model import CausalWanRefiner

    folder = Path(folder)
    if not folder.is_dir():
        raise RefineError(f"{folder} is not a directory; pass a local WanTransformer3DModel folder "
                          "(nothing is downloaded)")
    import torch

    cfg = read_json(folder / CONFIG_NAME, "Wan config")
    spec = wan_model_config(cfg, folder / CONFIG_NAME, cond_channels, keep_cross_attention, **overrides)
    stored = sum(check_safetensors_header(p, "weight shard") for p in wan_shards(folder))
    check_fits(model_bytes(spec) + stored, f"the Wan checkpoint in {folder}")  # the model and the file's tensors
    model = CausalWanRefiner.from_spec(spec)
    state = _read_wan_weights(folder)
    target = model.state_dict()
    new: dict[str, Tensor] = {}
    copied, ignored, zeroed = [], [], []
    for key, value in state.items():
        if key == "patch_embedding.weight":
            w = torch.zeros_like(target[key])  # [D, Cs + Cc, 1, p, p]
            if w.shape[0] != value.shape[0] or w.shape[2:] != value.shape[2:]:
                raise RefineError(f"patch_embedding {tuple(value.shape)} does not fit {tuple(w.shape)}")
            w[:, :value.shape[1]] = value
            new[key] = w
            if value.shape[1] < w.shape[1]:
                zeroed.append(f"patch_embedding.weight[:, {value.shape[1]}:{w.shape[1]}]")
        elif key in target:
            if tuple(target[key].shape) != tuple(value.shape):
                raise RefineError(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
            new[key] = value
        else:
            ignored.append(key)
            continue
        copied.append(key)
    if keep_cross_attention:
        if "condition_embedder.text_embedder.linear_1.weight" not in state:
            raise RefineError("keep_cross_attention=True but the checkpoint has no text_embedder; "
                              "pass keep_cross_attention=False")
        new["null_context"] = _null_context(state).to(target["null_context"].dtype)
    missing = sorted(set(target) - set(new))
    if missing:
        raise RefineError(f"checkpoint {folder} lacks {missing[:6]}; it is not a complete Wan transformer")
    model.load_state_dict(new, strict=True)
    report = WanLoadReport(tuple(sorted(copied)), tuple(sorted(ignored)), tuple(zeroed))
    return model.to(device).eval(), report

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

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import Tensor

from refine.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_json, read_safetensors
from refine.errors import RefineError


@dataclass(frozen=True)
class WanLoadReport:
    """What happened to each checkpoint tensor."""

    copied: tuple[str, ...]
    ignored: tuple[str, ...]  # checkpoint tensors with no place in the causal model
    zero_initialised: tuple[str, ...]  # model tensors (or channel ranges) set to zero


def _read_wan_weights(folder: Path) -> dict[str, Tensor]:
    index = folder / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as err:
            raise RefineError(f"shard index {index} is unreadable ({err})") from err
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(folder / shard, "weight shard"))
        return state
    return read_safetensors(folder / WEIGHTS_NAME, "Wan weights")


def _model_kwargs(cfg: dict, cond_channels: int, keep_cross: bool, overrides: dict) -> dict:
    patch = tuple(cfg.get("patch_size", (1, 2, 2)))
    if len(patch) != 3 or patch[0] != 1 or patch[1] != patch[2]:
        raise RefineError(f"Wan patch_size {patch} is not (1, p, p); only spatial square patches load")
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


def _null_context(state: dict[str, Tensor]) -> Tensor:
    """text_embedder applied to one all-zero (padding) text row -> [1, 1, D]."""
    w1, b1 = state["condition_embedder.text_embedder.linear_1.weight"], state["condition_embedder.text_embedder.linear_1.bias"]
    w2, b2 = state["condition_embedder.text_embedder.linear_2.weight"], state["condition_embedder.text_embedder.linear_2.bias"]
    zero = torch.zeros(1, w1.shape[1], dtype=w1.dtype)
    return Fn.linear(Fn.gelu(Fn.linear(zero, w1, b1), approximate="tanh"), w2, b2)[None]


def load_wan_checkpoint(folder: str | Path, *, cond_channels: int = 7, keep_cross_attention: bool = True,
                        device: str | torch.device = "cpu", **overrides):
    """Load a local diffusers WanTransformer3DModel folder into a CausalWanRefiner.

    overrides: further CausalWanRefiner config (frames_per_block, sink_frames, window_frames,
    sample_height, sample_width, residual_space, ...). Returns (model, WanLoadReport).
    """
    from refine.model import CausalWanRefiner

    folder = Path(folder)
    if not folder.is_dir():
        raise RefineError(f"{folder} is not a directory; pass a local WanTransformer3DModel folder "
                          "(nothing is downloaded)")
    cfg = read_json(folder / CONFIG_NAME, "Wan config")
    if cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise RefineError(f"{folder} holds a {cfg['_class_name']}, not a WanTransformer3DModel")
    try:
        model = CausalWanRefiner(**_model_kwargs(cfg, cond_channels, keep_cross_attention, overrides))
    except KeyError as err:
        raise RefineError(f"Wan config {folder / CONFIG_NAME} lacks {err}; is it a Wan transformer?") from err
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

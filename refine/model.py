"""CausalWanRefiner: a Wan-style diffusion transformer made block-causal, with a KV cache.

Pixel-space patches of [noisy frames | condition channels] (channel concatenation, as Wan
image-to-video / Wan-Fun control do) become tokens; every frame has its own timestep and adaLN
modulation; self-attention is bidirectional inside a block of F frames and causal across blocks;
3D rotary positions (frame, y, x) are applied at attention time. Parameter names follow
diffusers' WanTransformer3DModel so Wan checkpoints map onto it (see refine/wan.py).

Shapes: B envs, T frames (T' frames in a dense sequence), F frames per block, C channels,
H, W pixels, L tokens per frame, N tokens, D dim, h heads, d head dim.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn.functional as Fn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from torch import Tensor, nn

from refine.attention import CachedAttention, RotaryTables, grouped_attention, masked_attention
from refine.cache import KVCache, WriteMode
from refine.config import GUIDE_CHANNELS, GUIDE_SIGMA, ModelConfig
from refine.errors import RefineError
from refine.layout import FrameLayout, plan_attention

_D = ModelConfig()


class CausalWanAttention(nn.Module):
    """Wan attention (to_q/to_k/to_v/to_out.0, RMS norm across heads on q and k)."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)

    def forward(self, x: Tensor, attend, layer: int) -> Tensor:
        """Self-attention. x [B, N, D] -> [B, N, D]"""
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))  # [B, N, h, d]
        k = self.norm_k(self.to_k(x)).unflatten(2, (self.heads, -1))
        v = self.to_v(x).unflatten(2, (self.heads, -1))
        return self.to_out[0](attend(q, k, v, layer).flatten(2))

    def cross(self, x: Tensor, context: Tensor) -> Tensor:
        """Cross-attention to a fixed context. x [B, N, D], context [1, n_ctx, D] -> [B, N, D]"""
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1)).transpose(1, 2)  # [B, h, N, d]
        k = self.norm_k(self.to_k(context)).unflatten(2, (self.heads, -1)).transpose(1, 2)  # [1, h, n, d]
        v = self.to_v(context).unflatten(2, (self.heads, -1)).transpose(1, 2)
        b = x.shape[0]
        out = Fn.scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """Per-frame adaLN. x [B, N, D]; shift, scale [B, T, 1, D] -> [B, N, D]"""
    xf = x.unflatten(1, (frames, -1))  # [B, T, L, D]
    return (xf * (1 + scale) + shift).flatten(1, 2)


def _gate(x: Tensor, gate: Tensor, frames: int) -> Tensor:
    """x [B, N, D] * gate [B, T, 1, D] -> [B, N, D]"""
    return (x.unflatten(1, (frames, -1)) * gate).flatten(1, 2)


class CausalWanBlock(nn.Module):
    """Wan transformer block with per-frame modulation; attn2 only with a null context."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, eps: float, cross_attn: bool, cross_attn_norm: bool):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = CausalWanAttention(dim, heads, eps)
        if cross_attn:
            self.attn2 = CausalWanAttention(dim, heads, eps)
            self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, mod: Tensor, attend, layer: int, context: Tensor | None) -> Tensor:
        """x [B, N, D]; mod [B, T, 6, D] per-frame time projection -> [B, N, D]"""
        frames = mod.shape[1]
        e = (self.scale_shift_table[None] + mod).chunk(6, dim=2)  # 6 x [B, T, 1, D]
        shift, scale, gate, c_shift, c_scale, c_gate = e
        h = _modulate(self.norm1(x), shift, scale, frames)
        x = x + _gate(self.attn1(h, attend, layer), gate, frames)
        if context is not None:
            x = x + self.attn2.cross(self.norm2(x), context)
        h = _modulate(self.norm3(x), c_shift, c_scale, frames)
        return x + _gate(self.ffn(h), c_gate, frames)

    def write_kv(self, x: Tensor, mod: Tensor, attend, layer: int) -> None:
        """Only this block's K/V into the cache (the clean pass's last block: nothing reads its output)."""
        shift, scale = (self.scale_shift_table[None, :, :2] + mod[:, :, :2]).chunk(2, dim=2)
        h = _modulate(self.norm1(x), shift, scale, mod.shape[1])
        a = self.attn1
        attend.write(layer, a.norm_k(a.to_k(h)).unflatten(2, (a.heads, -1)), a.to_v(h).unflatten(2, (a.heads, -1)))


class TimeEmbedder(nn.Module):
    """Wan's condition_embedder without the text projection."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)


SAMPLE_MIN_SIGMA = 1e-3  # prediction="sample": sigma floor when turning x0_hat into a velocity


def guided_upsample(x: Tensor, guide: Tensor, sigma: float) -> Tensor:
    """Joint bilateral upsampling of token values to pixels: x [N, C, hp, wp], guide [N, G, H, W]
    -> [N, C, H, W], with H = p * hp, W = p * wp and p even. Each pixel takes its four nearest tokens
    with the bilinear weights of Fn.interpolate(mode="bilinear", align_corners=False), each times
    exp(-|g - g_k|^2 / (2 sigma^2)), where g is the guide at the pixel and g_k its mean over token
    k's patch, renormalised; a 1e-4 floor keeps the plain bilinear weights where no token is alike.
    A constant guide gives exactly the bilinear upsample."""
    n, c, hp, wp = x.shape
    h, w = guide.shape[-2:]
    p, g = h // hp, guide.shape[1]
    if p * hp != h or p * wp != w or w // wp != p or p % 2:
        raise RefineError(f"guided_upsample: {h}x{w} pixels from {hp}x{wp} tokens needs an even integer patch size")
    # pixel y's upper tap is token floor((y - p/2) / p): with one replicated token of padding that is
    # padded row floor((y + p/2) / p) of the nearest upsample, i.e. pixel row y + p/2 of it, and the
    # lower tap is p rows further (the edge rows, where bilinear clamps, get two copies of the edge token)
    def upsampled(t: Tensor) -> Tensor:  # [N, K, hp, wp] -> [N, K, H + 2p, W + 2p]
        return Fn.pad(t, (1, 1, 1, 1), mode="replicate").repeat_interleave(p, 2).repeat_interleave(p, 3)

    means, values = upsampled(Fn.avg_pool2d(guide, p)), upsampled(x)
    ar = lambda size: ((torch.arange(size, device=x.device, dtype=x.dtype) + p // 2) % p + 0.5) / p  # noqa: E731
    fy, fx = ar(h)[:, None], ar(w)[None, :]  # weight of the lower / right tap
    num = torch.zeros(n, c, h, w, dtype=x.dtype, device=x.device)
    den = torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device)
    o, q = p // 2, p // 2 + p
    for y0, wy in ((o, 1 - fy), (q, fy)):
        for x0, wx in ((o, 1 - fx), (q, fx)):
            d = (guide - means[:, :, y0:y0 + h, x0:x0 + w]).square_().sum(1, keepdim=True)  # [N, 1, H, W]
            weight = d.mul_(-0.5 / (sigma * sigma)).exp_().add_(1e-4).mul_(wy * wx)
            num.addcmul_(weight, values[:, :, y0:y0 + h, x0:x0 + w])
            den.add_(weight)
    return num.div_(den)


class CausalWanRefiner(ModelMixin, ConfigMixin):
    """Block-causal Wan DiT over pixel patches; predicts the flow-matching velocity v = noise - x0.

    The network itself is plain velocity prediction in whatever space its noisy channels live.
    `to_diffusion`/`from_diffusion` define that space: with residual_space (default) the model
    diffuses x = residual_scale * (rgb - coarse rgb), so a perfect coarse render is x0 = 0 and
    the network only learns the refinement; otherwise x = 2 * rgb - 1.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, patch_size: int = _D.patch_size, num_attention_heads: int = _D.num_attention_heads,
                 attention_head_dim: int = _D.attention_head_dim, cond_channels: int = _D.cond_channels,
                 out_channels: int = _D.out_channels, freq_dim: int = _D.freq_dim, ffn_dim: int = _D.ffn_dim,
                 num_layers: int = _D.num_layers, eps: float = _D.eps,
                 cross_attn_tokens: int = _D.cross_attn_tokens, cross_attn_norm: bool = _D.cross_attn_norm,
                 rope_max_seq_len: int = _D.rope_max_seq_len, rope_theta: float = _D.rope_theta,
                 frames_per_block: int = _D.frames_per_block, sink_frames: int = _D.sink_frames,
                 window_frames: int = _D.window_frames, residual_space: bool = _D.residual_space,
                 residual_scale: float = _D.residual_scale, sample_height: int = _D.sample_height,
                 sample_width: int = _D.sample_width, prediction: str = _D.prediction,
                 head_channels: int = _D.head_channels, head_hidden: int = _D.head_hidden,
                 unpatchify: str = _D.unpatchify):
        super().__init__()
        cfg = ModelConfig(**{f.name: v for f, v in zip(fields(ModelConfig), (
            patch_size, num_attention_heads, attention_head_dim, cond_channels, out_channels, freq_dim,
            ffn_dim, num_layers, eps, cross_attn_tokens, cross_attn_norm, rope_max_seq_len, rope_theta,
            frames_per_block, sink_frames, window_frames, residual_space, residual_scale, sample_height,
            sample_width, prediction, head_channels, head_hidden, unpatchify))})
        self.spec = cfg
        dim, p = cfg.dim, cfg.patch_size
        self.rope = RotaryTables(cfg.attention_head_dim, cfg.rope_max_seq_len, cfg.rope_theta)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=(1, p, p), stride=(1, p, p))
        self.condition_embedder = TimeEmbedder(dim, cfg.freq_dim)
        n_ctx = cfg.cross_attn_tokens
        self.null_context = nn.Parameter(torch.randn(1, n_ctx, dim) * 0.02) if n_ctx else None
        self.blocks = nn.ModuleList([
            CausalWanBlock(dim, cfg.ffn_dim, cfg.num_attention_heads, cfg.eps, n_ctx > 0, cfg.cross_attn_norm)
            for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        per_token = 1 if cfg.upsamples_tokens else p * p
        self.proj_out = nn.Linear(dim, (cfg.head_channels or cfg.out_channels) * per_token)
        self.pixel_head = None
        if cfg.head_channels:
            hid = cfg.head_hidden
            self.pixel_head = nn.Sequential(
                nn.Conv2d(cfg.head_channels + cfg.in_channels, hid, 3, padding=1), nn.GELU(approximate="tanh"),
                nn.Conv2d(hid, cfg.out_channels, 3, padding=1))
            nn.init.zeros_(self.pixel_head[2].weight)
            nn.init.zeros_(self.pixel_head[2].bias)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    @classmethod
    def from_spec(cls, spec: ModelConfig) -> "CausalWanRefiner":
        return cls(**asdict(spec))

    # ---- pieces -------------------------------------------------------------------------------
    def _check(self, sample: Tensor, cond: Tensor, timestep: Tensor) -> None:
        cfg = self.spec
        if sample.ndim != 5 or cond.ndim != 5 or sample.shape[:2] != cond.shape[:2] \
                or sample.shape[-2:] != cond.shape[-2:]:
            raise RefineError(f"sample {tuple(sample.shape)} and cond {tuple(cond.shape)} must both be "
                              "[B, T, C, H, W] with equal B, T, H, W")
        if sample.shape[2] != cfg.out_channels or cond.shape[2] != cfg.cond_channels:
            raise RefineError(f"channels: sample has {sample.shape[2]} (model expects {cfg.out_channels}), "
                              f"cond has {cond.shape[2]} (model expects cond_channels={cfg.cond_channels})")
        h, w = sample.shape[-2:]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise RefineError(f"frame size {h}x{w} is not a multiple of patch_size={cfg.patch_size}; "
                              "resize or pad the frames")
        if tuple(timestep.shape) != tuple(sample.shape[:2]):
            raise RefineError(f"timestep {tuple(timestep.shape)} must be [B, T] = {tuple(sample.shape[:2])} "
                              "(one timestep per frame, in [0, 1000])")

    def patchify(self, sample: Tensor, cond: Tensor) -> Tensor:
        """[B, T, Cs, H, W], [B, T, Cc, H, W] -> tokens [B, T*L, D] (frame-major, then y, x)."""
        x = torch.cat([sample, cond], dim=2)  # [B, T, C, H, W]
        b, t, c, h, w = x.shape
        p = self.spec.patch_size
        x = x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # [B, T, hp, wp, C, p, p]
        x = x.reshape(b, t * (h // p) * (w // p), c * p * p)  # [B, N, C*p*p]
        weight = self.patch_embedding.weight.reshape(self.patch_embedding.out_channels, -1)  # [D, C*p*p]
        return Fn.linear(x, weight, self.patch_embedding.bias)

    def time_modulation(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        """timestep [B, T] (0..1000) -> temb [B, T, D], per-frame block modulation [B, T, 6, D]."""
        ce = self.condition_embedder
        b, t = timestep.shape
        freq = ce.timesteps_proj(timestep.reshape(-1).float())  # [B*T, freq_dim]
        temb = ce.time_embedder(freq.to(self.proj_out.weight.dtype)).reshape(b, t, -1)  # [B, T, D]
        return temb, ce.time_proj(ce.act_fn(temb)).unflatten(2, (6, -1))  # [B, T, 6, D]

    def _run(self, sample: Tensor, cond: Tensor, timestep: Tensor, attend, write_only: bool = False) -> Tensor | None:
        """Shared trunk. -> velocity [B, T, Cs, H, W] (None with write_only: the blocks ran for
        their side effect on the cache; the last block only writes its K/V and the output layers
        are skipped, since nothing reads them)."""
        b, t, _, h, w = sample.shape
        p = self.spec.patch_size
        hp, wp = h // p, w // p
        x = self.patchify(sample, cond)  # [B, N, D]
        temb, mod = self.time_modulation(timestep)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if write_only and i == last:
                block.write_kv(x, mod, attend, i)
                return None
            x = block(x, mod, attend, i, self.null_context)
        shift, scale = (self.scale_shift_table[None] + temb[:, :, None]).chunk(2, dim=2)  # [B, T, 1, D] x2
        x = _modulate(self.norm_out(x), shift, scale, t)
        x = self.proj_out(x)  # [B, N, p*p*Cs] (linear) or [B, N, Cs] (smooth)
        if self.spec.upsamples_tokens:  # one value per token and channel, upsampled to pixels
            x = x.reshape(b * t, hp, wp, -1).permute(0, 3, 1, 2)  # [B*T, Cs, hp, wp]
            if self.spec.unpatchify == "guided":
                out = guided_upsample(x, cond[:, :, :GUIDE_CHANNELS].flatten(0, 1).to(x.dtype), GUIDE_SIGMA)
            else:
                out = Fn.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            out = out.unflatten(0, (b, t))
        else:
            x = x.reshape(b, t, hp, wp, p, p, -1).permute(0, 1, 6, 2, 4, 3, 5)  # [B, T, Cs, hp, p, wp, p]
            out = x.reshape(b, t, -1, h, w)
        if self.pixel_head is not None:  # [B, T, head + Cs + Cc, H, W] -> [B, T, Cs, H, W]
            feats = torch.cat([out, sample.to(out.dtype), cond.to(out.dtype)], 2).flatten(0, 1)
            # channels-last: oneDNN's (and cuDNN's) faster layout for this small 3x3 conv head
            out = self.pixel_head(feats.contiguous(memory_format=torch.channels_last)).unflatten(0, (b, t))
        if self.spec.prediction == "sample":  # out is x0_hat; return the velocity it implies
            sigma = (timestep.to(out.dtype) / 1000.0).clamp(min=SAMPLE_MIN_SIGMA)[:, :, None, None, None]
            return (sample - out) / sigma
        return out

    # ---- public forwards ----------------------------------------------------------------------
    def forward(self, sample: Tensor, cond: Tensor, timestep: Tensor, layout: FrameLayout | None = None,
                use_window: bool = True, attention: str = "grouped") -> Tensor:
        """Dense forward with the block-causal (or teacher-forcing) mask from `layout`.

        sample [B, T', Cs, H, W] in diffusion space; cond [B, T', Cc, H, W]; timestep [B, T'] in
        [0, 1000] (= 1000 * sigma). layout defaults to FrameLayout.causal(T', F). With use_window
        the config's sink + window eviction and window-relative positions apply (the reference
        for cached inference); without it every earlier block is visible at positions `frame`.
        attention: "grouped" (fast: one unmasked attention per group of frames that see the same
        keys) or "masked" (the plain N x N reference). Returns the velocity [B, T', Cs, H, W].
        """
        self._check(sample, cond, timestep)
        cfg = self.spec
        layout = layout or FrameLayout.causal(sample.shape[1], cfg.frames_per_block)
        if layout.num_frames != sample.shape[1]:
            raise RefineError(f"layout has {layout.num_frames} frames but sample has {sample.shape[1]}")
        plan = plan_attention(layout, cfg.sink_frames if use_window else 0,
                              cfg.window_frames if use_window else None)
        hp, wp = sample.shape[-2] // cfg.patch_size, sample.shape[-1] // cfg.patch_size
        if attention == "grouped":
            attend = grouped_attention(layout, plan, self.rope, hp, wp)
        elif attention == "masked":
            attend = masked_attention(layout, plan, self.rope, hp, wp, sample.device)
        else:
            raise RefineError(f"attention={attention!r} is not 'grouped' or 'masked'")
        return self._run(sample, cond, timestep, attend)

    def new_cache(self, batch_size: int, height: int | None = None, width: int | None = None) -> KVCache:
        """Preallocate a KV cache for B envs at H x W (defaults: sample_height x sample_width)."""
        cfg = self.spec
        h, w = height or cfg.sample_height, width or cfg.sample_width
        if h % cfg.patch_size or w % cfg.patch_size:
            raise RefineError(f"frame size {h}x{w} is not a multiple of patch_size={cfg.patch_size}")
        return KVCache(batch_size=batch_size, num_layers=cfg.num_layers, heads=cfg.num_attention_heads,
                       head_dim=cfg.attention_head_dim,
                       tokens_per_frame=(h // cfg.patch_size) * (w // cfg.patch_size),
                       sink_frames=cfg.sink_frames, window_frames=cfg.window_frames,
                       device=self.proj_out.weight.device, dtype=self.proj_out.weight.dtype)

    def forward_cached(self, sample: Tensor, cond: Tensor, timestep: Tensor, cache: KVCache,
                       write: WriteMode, write_only: bool = False, episodes: Tensor | None = None) -> Tensor | None:
        """One block through the cache. sample [B, F, Cs, H, W]; cond [B, F, Cc, H, W]; timestep [B, F];
        episodes [B, F] per-row episode tags of the block's frames (append only; see KVCache).

        write='append' on a block's first denoising step, 'overwrite' on later steps and the
        clean pass. Returns the velocity [B, F, Cs, H, W], or None with write_only (the clean
        pass: only the K/V it writes are needed, so the output layers are skipped).
        """
        self._check(sample, cond, timestep)
        b, f, _, h, w = sample.shape
        p = self.spec.patch_size
        hp, wp = h // p, w // p
        if (cache.batch_size, cache.tokens_per_frame, cache.num_layers) != (b, hp * wp, self.spec.num_layers):
            raise RefineError(f"cache (B={cache.batch_size}, L={cache.tokens_per_frame}, layers="
                              f"{cache.num_layers}) does not fit this input (B={b}, L={hp * wp}, layers="
                              f"{self.spec.num_layers}); build it with model.new_cache(B, H, W)")
        cache.begin(f, write, episodes)
        cos_k, sin_k = self.rope(torch.arange(cache.valid_frames), hp, wp)  # [S, d/2]
        n = f * hp * wp
        attend = CachedAttention(cache, cos_k, sin_k, cos_k[-n:], sin_k[-n:], cache.attention_mask())
        return self._run(sample, cond, timestep, attend, write_only)

    # ---- diffusion space ----------------------------------------------------------------------
    def to_diffusion(self, rgb: Tensor, cond: Tensor) -> Tensor:
        """rgb [B, T, 3, H, W] in [0, 1] -> x0 [B, T, 3, H, W] in the space the model diffuses."""
        if self.spec.residual_space:
            return self.spec.residual_scale * (rgb - cond[:, :, :self.spec.out_channels])
        return 2.0 * rgb - 1.0

    def from_diffusion(self, x0: Tensor, cond: Tensor, clamp: bool = True) -> Tensor:
        """x0 [B, T, 3, H, W] -> rgb [B, T, 3, H, W], clamped to [0, 1] unless clamp=False (losses)."""
        if self.spec.residual_space:
            rgb = cond[:, :, :self.spec.out_channels] + x0 / self.spec.residual_scale
        else:
            rgb = (x0 + 1.0) / 2.0
        return rgb.clamp(0.0, 1.0) if clamp else rgb

    def coarse_x0(self, cond: Tensor) -> Tensor:
        """The coarse render in diffusion space (SDEdit start). cond [B, T, Cc, H, W] -> [B, T, 3, H, W]"""
        c = self.spec.out_channels
        if self.spec.residual_space:
            return torch.zeros_like(cond[:, :, :c])
        if self.spec.cond_channels >= c:
            return 2.0 * cond[:, :, :c] - 1.0
        return torch.zeros(*cond.shape[:2], c, *cond.shape[3:], device=cond.device, dtype=cond.dtype)

    # ---- save / load (safetensors only) -------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write config.json + diffusion_pytorch_model.safetensors atomically (temp dir, then rename)."""
        kwargs.pop("safe_serialization", None)
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=target))
        try:
            super().save_pretrained(tmp, safe_serialization=True, **kwargs)
            for item in tmp.iterdir():
                os.replace(item, target / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        device: str | torch.device = "cpu", **kwargs) -> "CausalWanRefiner":
        """Load from a LOCAL folder written by save_pretrained; any problem -> RefineError."""
        from refine.checkpoint import load_refiner_folder

        if kwargs:
            raise RefineError(f"unsupported from_pretrained options {sorted(kwargs)}; only a local folder "
                              "and device are accepted")
        return load_refiner_folder(cls, Path(pretrained_model_name_or_path), device)

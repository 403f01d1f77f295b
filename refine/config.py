"""Light configuration dataclasses for the refiner (stdlib only, so importing them is free).

The heavy modelling code lives in `refine.model`; `ModelConfig` documents and validates the
defaults that `CausalWanRefiner` registers with diffusers' `ConfigMixin`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from refine.errors import RefineError


COND_CHANNELS = 7  # G-buffer condition: coarse RGB (3) | 1/(1+depth) (1) | alpha (1) | flow/16 (2)
SHADING_CHANNELS = 7  # shading cues after it: normal (3) | diffuse light (3) | ambient (1)
# The lit layout (refine.conditioning.encode_lit_condition): lit render sRGB (3) | 1/(1+depth) (1) |
# alpha (1) | flow/16 (2) | albedo sRGB (3) | camera-space normal (3) | sun visibility (1) |
# sun n.l (1) | roughness, metallic, transmission (3) | mirrored environment sRGB (3). The lit
# render comes first, so in residual space the model corrects the lit render.
LIT_CHANNELS = 21
# unpatchify="guided" weighs tokens by the first GUIDE_CHANNELS condition channels (the render's RGB,
# 1/(1+depth) and alpha in both layouts): a Gaussian of width GUIDE_SIGMA in their Euclidean distance
GUIDE_CHANNELS = 5
GUIDE_SIGMA = 0.1
UNPATCHIFY_MODES = ("linear", "smooth", "guided")


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise RefineError(f"{name}={value!r} must be > 0; pass a positive value")


@dataclass(frozen=True)
class ModelConfig:
    """Size and causal layout of `CausalWanRefiner`.

    The default is sized for real time on a 2-core CPU at 128x128 (see refine/NOTES.md for the
    measured numbers): patch 8 gives 16x16 = 256 tokens per frame; 4 layers of dim 192
    (3 heads x 64, FFN 768), 2.2 M parameters; blocks of 2 frames; 1 sink frame + a rolling
    window of 4 frames; with the 3-step sampler that is 8.0 GFLOP per refined frame.
    """

    patch_size: int = 8  # pixels per token side (Wan: (1, p, p) patches, no temporal patching)
    num_attention_heads: int = 3
    attention_head_dim: int = 64
    cond_channels: int = 7  # coarse RGB (3) | 1/(1+depth) (1) | alpha (1) | flow/16 (2)
    out_channels: int = 3  # noisy/predicted channels (RGB)
    freq_dim: int = 256  # sinusoidal timestep features
    ffn_dim: int = 768
    num_layers: int = 4
    eps: float = 1e-6
    cross_attn_tokens: int = 0  # >0: Wan-style cross-attention to a learned null context
    cross_attn_norm: bool = True
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    frames_per_block: int = 2  # F: bidirectional inside a block, causal across blocks
    sink_frames: int = 1  # first frames kept in the cache forever
    window_frames: int = 4  # non-sink frames in the cache, the current block included
    residual_space: bool = True  # diffuse x = residual_scale * (rgb - coarse rgb)
    residual_scale: float = 2.0
    sample_height: int = 128
    sample_width: int = 128
    # what the network's last layer predicts: "velocity" v = noise - x0 (Wan's convention, needed to
    # load Wan checkpoints) or "sample" x0 itself. Either way forward() returns the velocity
    # (for "sample": (x - x0_hat) / sigma), so the sampler and cache code are shared. "sample"
    # suits small few-step models: the output does not carry the input noise through v's error.
    prediction: str = "velocity"
    # >0: a pixel head instead of Wan's bare linear un-patchify. proj_out emits head_channels
    # features per pixel, and two 3x3 convs over [features | noisy sample | condition] give the
    # output (last conv zero-initialised, so an untrained "sample" model returns the coarse
    # render). Lets the output cross 8x8 patch borders (no seams) and use full-resolution
    # condition detail. 0 keeps Wan's layout (needed to load Wan checkpoints).
    head_channels: int = 0
    head_hidden: int = 32
    # how token outputs become pixels: "linear" (Wan: each token's p x p block from one Linear) or
    # "smooth" (head_channels features per token, bilinearly upsampled to pixels; needs the pixel
    # head). With "smooth" the trunk can only add smooth fields, so fine detail can only come from
    # the head's full-resolution view of the condition: a flat surface in the render stays flat
    # (the local-affine idea of bilateral-guided upsampling / HDRNet), or "guided" (as smooth, but each
    # pixel weighs its four nearest tokens by how alike the guide, i.e. the condition's first five
    # channels, is at the pixel and over the token's patch: joint bilateral upsampling, so a token's
    # correction does not spill across a silhouette or a shadow edge into its neighbour's surface)
    unpatchify: str = "linear"

    def __post_init__(self) -> None:
        for name in ("patch_size", "num_attention_heads", "attention_head_dim", "out_channels",
                     "freq_dim", "ffn_dim", "num_layers", "frames_per_block", "window_frames",
                     "sample_height", "sample_width", "rope_max_seq_len"):
            _positive(name, getattr(self, name))
        _positive("residual_scale", self.residual_scale)
        if self.prediction not in ("velocity", "sample"):
            raise RefineError(f"prediction={self.prediction!r} must be 'velocity' or 'sample'")
        if self.head_channels < 0 or self.head_hidden <= 0:
            raise RefineError(f"head_channels={self.head_channels} must be >= 0 and head_hidden="
                              f"{self.head_hidden} > 0")
        if self.unpatchify not in UNPATCHIFY_MODES:
            raise RefineError(f"unpatchify={self.unpatchify!r} must be one of {', '.join(UNPATCHIFY_MODES)}")
        if self.upsamples_tokens and not self.head_channels:
            raise RefineError(f"unpatchify={self.unpatchify!r} needs the pixel head (head_channels > 0): the "
                              "head adds the detail a smooth field cannot")
        if self.unpatchify == "guided" and self.cond_channels < GUIDE_CHANNELS:
            raise RefineError(f"unpatchify='guided' reads the first {GUIDE_CHANNELS} condition channels as its "
                              f"guide, the model has cond_channels={self.cond_channels}")
        if self.cond_channels < 0 or self.cross_attn_tokens < 0 or self.sink_frames < 0:
            raise RefineError("cond_channels, cross_attn_tokens and sink_frames must be >= 0, got "
                              f"{self.cond_channels}, {self.cross_attn_tokens}, {self.sink_frames}")
        d = self.attention_head_dim
        if d % 2 or d - 4 * (d // 6) <= 0:
            raise RefineError(f"attention_head_dim={d} must be even and >= 6 so that rotary "
                              "embeddings can split it over (frame, y, x); use e.g. 16, 48 or 64")
        if self.residual_space and self.cond_channels < self.out_channels:
            raise RefineError(f"residual_space=True needs the coarse image in the first "
                              f"{self.out_channels} condition channels, but cond_channels="
                              f"{self.cond_channels}; add them or set residual_space=False")
        if self.window_frames < self.frames_per_block:
            raise RefineError(f"window_frames={self.window_frames} < frames_per_block="
                              f"{self.frames_per_block}: the current block must fit in the window; "
                              "raise window_frames")
        for name, size in (("sample_height", self.sample_height), ("sample_width", self.sample_width)):
            if size % self.patch_size:
                raise RefineError(f"{name}={size} is not a multiple of patch_size={self.patch_size}; "
                                  "pick a frame size divisible by the patch size")
        if self.sink_frames + self.window_frames > self.rope_max_seq_len:
            raise RefineError(f"sink_frames + window_frames = {self.sink_frames + self.window_frames} "
                              f"exceeds rope_max_seq_len={self.rope_max_seq_len}; raise rope_max_seq_len")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def in_channels(self) -> int:
        return self.out_channels + self.cond_channels

    @property
    def tokens_per_frame(self) -> int:
        return (self.sample_height // self.patch_size) * (self.sample_width // self.patch_size)

    @property
    def cache_frames(self) -> int:
        return self.sink_frames + self.window_frames

    @property
    def upsamples_tokens(self) -> bool:
        """Tokens emit one value per channel, upsampled to pixels ("smooth", "guided"), rather than
        a p x p block each ("linear")."""
        return self.unpatchify != "linear"


NOISE_MODES = ("fresh", "static", "zero")


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step flow-matching sampler run once per block.

    `sigmas` overrides the schedule. Otherwise sigma_k = sigma_max * shift(1 - k / num_steps)
    with shift(s) = shift * s / (1 + (shift - 1) * s) (FlowMatchEulerDiscreteScheduler's warp).
    With `sigma_max < 1` the block starts from the coarse render noised to sigma_max (SDEdit);
    with 1 it starts from pure noise. Default: 0.75, 0.5, 0.25 (RealWonder's 750/500/250), which
    beat a pure-noise start by ~4 dB PSNR on synthetic pairs (refine/NOTES.md).
    """

    num_steps: int = 3
    sigma_max: float = 0.75
    shift: float = 1.0
    sigmas: tuple[float, ...] | None = None
    # "fresh": new noise for every block and step. "static": one noise field per env and step,
    # drawn at reset and reused for every frame of every block, so a pixel that does not change
    # is noised, and so refined, the same way in every frame (less flicker; see NOTES.md).
    # "zero": no noise at all; the block starts from the coarse render and each step re-scales the
    # predicted x0 to the next sigma (a deterministic refiner: the model's conditional mean, not a
    # sample; it trains with fresh noise, and only its self-rollout phase runs noise-free).
    noise: str = "fresh"
    # True: after the last step a clean pass (t = 0, the refined block as input) writes the block's
    # K/V, as Self-Forcing does. False: the K/V the last denoising step wrote stay as the context,
    # which saves the clean pass (a third of a one-step block's cost); a model must be trained for
    # it (train-refiner clean_pass=false), since its context is then the block at the last sigma.
    clean_pass: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.clean_pass, bool):
            raise RefineError(f"clean_pass={self.clean_pass!r} must be true or false")
        if self.noise not in NOISE_MODES:
            raise RefineError(f"noise={self.noise!r} must be one of {NOISE_MODES}; 'static' reuses one "
                              "noise field for every block (steadier video), 'fresh' draws new noise per block, "
                              "'zero' samples deterministically")
        if self.sigmas is not None:
            s = tuple(float(x) for x in self.sigmas)
            object.__setattr__(self, "sigmas", s)
            if not s or any(not 0.0 < x <= 1.0 for x in s) or any(a <= b for a, b in zip(s, s[1:])):
                raise RefineError(f"sigmas={s} must be non-empty, strictly decreasing and in (0, 1]; "
                                  "e.g. (0.909, 0.725, 0.422)")
            object.__setattr__(self, "num_steps", len(s))
        _positive("num_steps", self.num_steps)
        _positive("shift", self.shift)
        if not 0.0 < self.sigma_max <= 1.0:
            raise RefineError(f"sigma_max={self.sigma_max} must be in (0, 1]; use 1.0 to start from "
                              "noise or 0.6-0.9 to start from the noised coarse render")


PIXEL_LOSSES = ("mse", "charbonnier")
CHARBONNIER_EPS = 1e-3  # in diffusion units (residual_scale 2: one grey level is 2/255 = 0.0078)


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule: teacher forcing, then few-step specialisation, optionally self-rollout."""

    phase1_steps: int = 2000  # teacher forcing, sigma ~ shifted uniform
    phase2_steps: int = 500  # teacher forcing, sigma drawn from the sampler's sigma list
    phase3_steps: int = 0  # self-rollout with the cache, supervised loss (see NOTES.md)
    batch_size: int = 4
    clip_frames: int | None = None  # random crop of this many frames (multiple of F); None = whole clip
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    context_noise: float = 0.05  # max sigma of the noise put on the clean context
    # weight of a (1 - SSIM) term on the predicted frames (RGB, 7x7 windows as skimage's metric) in
    # phases 2 and 3, the few-step specialisation: MSE alone leaves faint structure on flat surfaces
    ssim_weight: float = 0.0
    # weight of a temporal term in phases 2 and 3: mean squared difference between the predicted
    # and the target frame-to-frame change, (x0_t - x0_{t-1}) - (y_t - y_{t-1}); penalises flicker
    # that a per-frame loss cannot see
    temporal_weight: float = 0.0
    # weight of an edge term in phases 2 and 3: mean |neighbour differences of the prediction - those
    # of the target| (train.gradient_loss); a soft or shifted edge, which MSE forgives, costs its contrast
    grad_weight: float = 0.0
    # per-pixel loss on x0 (or v): "mse", or "charbonnier" (sqrt(d^2 + eps^2) - eps, eps =
    # CHARBONNIER_EPS, an L1 that stays smooth at 0). MSE's gradient vanishes with the error, so a
    # faint (1 grey level) texture costs almost nothing; L1's does not (NOTES.md, session 7)
    loss: str = "mse"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # train only the parameters whose names start with one of these prefixes (e.g. ("pixel_head",)
    # to fine-tune the output head of a trained model with the transformer frozen); () = all
    train_only: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("phase1_steps", "phase2_steps", "phase3_steps"):
            if getattr(self, name) < 0:
                raise RefineError(f"{name}={getattr(self, name)} must be >= 0")
        if self.total_steps == 0:
            raise RefineError("phase1_steps + phase2_steps + phase3_steps is 0; train at least one step")
        for name in ("batch_size", "lr", "checkpoint_every", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        for name in ("ssim_weight", "temporal_weight", "grad_weight"):
            if not 0.0 <= getattr(self, name) < 1e3:
                raise RefineError(f"{name}={getattr(self, name)} must be in [0, 1000) (0 = off)")
        if not 0.0 <= self.context_noise < 1.0 or not math.isfinite(self.grad_clip):
            raise RefineError(f"context_noise={self.context_noise} must be in [0, 1) and grad_clip "
                              f"finite (got {self.grad_clip})")
        if self.clip_frames is not None:
            _positive("clip_frames", self.clip_frames)
        if self.loss not in PIXEL_LOSSES:
            raise RefineError(f"loss={self.loss!r} is not one of {PIXEL_LOSSES}")
        object.__setattr__(self, "train_only", tuple(str(p) for p in self.train_only))
        if any(not p for p in self.train_only):
            raise RefineError(f"train_only={self.train_only} holds an empty prefix; name parameter prefixes "
                              "such as 'pixel_head', or leave it empty to train everything")

    @property
    def total_steps(self) -> int:
        return self.phase1_steps + self.phase2_steps + self.phase3_steps

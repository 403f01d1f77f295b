"""Streaming refiner: push one block of condition frames, get the refined RGB block back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from refine.cache import CacheSnapshot, KVCache
from refine.config import SamplerConfig
from refine.errors import RefineError
from refine.layout import FrameLayout
from refine.sampler import FewStepSampler, block_noise, draw_noise, env_seeds, make_generators


class Refiner:
    """Holds a CausalWanRefiner, its KV cache and per-env noise generators.

    Cached mode (default): each block costs len(sigmas) forwards over the block's tokens plus one
    clean pass at t = 0 that writes the block's K/V. recompute=True keeps the clean frames
    themselves instead and re-runs the whole sink + window context in every denoising step (no
    cache, no clean pass): the baseline that the cache speed-up is measured against.

    latent=True: the model diffuses latents (any out_channels, condition led by the encoded coarse
    render); push returns them unclamped, for the caller's decoder. Otherwise RGB in [0, 1].
    """

    def __init__(self, model, sampler: SamplerConfig | None = None, device: str | torch.device = "cpu",
                 recompute: bool = False, height: int | None = None, width: int | None = None,
                 latent: bool = False):
        spec = model.spec
        if spec.out_channels != 3 and not latent:
            raise RefineError(f"model predicts {spec.out_channels} channels; the pixel refiner needs 3 (RGB), "
                              "or pass latent=True for a latent-space model and decode its output")
        self.latent = latent
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sampler = FewStepSampler(sampler)
        self.recompute = recompute
        if recompute and not self.sampler.cfg.clean_pass:
            raise RefineError("recompute=True keeps clean context frames; it needs a sampler with clean_pass=True")
        self.height, self.width = height or spec.sample_height, width or spec.sample_width
        self.frames_per_block = spec.frames_per_block
        self.batch_size = 0
        self.cache: KVCache | None = None
        self._gens: list[torch.Generator] = []
        self._static: Tensor | None = None  # noise="static": [B, steps, 1, C, H, W]
        self._ctx_x0: Tensor | None = None  # recompute: [B, n, 3, H, W] clean context frames
        self._ctx_cond: Tensor | None = None  # [B, n, Cc, H, W]
        self._ctx_block: list[int] = []
        self._ctx_sink = 0  # how many of the context frames are sinks
        self.blocks_done = 0

    @property
    def frames_done(self) -> int:
        return self.blocks_done * self.frames_per_block

    def reset(self, batch_size: int = 1, seed: int | Sequence[int] = 0) -> None:
        """Start a new rollout for B envs; int seeds are hashed per env (see sampler.env_seeds)."""
        if batch_size <= 0:
            raise RefineError(f"batch_size={batch_size} must be > 0")
        self._gens = make_generators(env_seeds(seed, batch_size), self.device)
        self._static = None
        if self.sampler.cfg.noise == "static":
            shape = (len(self.sampler.sigmas), 1, self.model.spec.out_channels, self.height, self.width)
            self._static = draw_noise(self._gens, shape, self.device)
        if not self.recompute:
            if self.cache is None or self.cache.batch_size != batch_size:
                self.cache = self.model.new_cache(batch_size, self.height, self.width)
            self.cache.reset()
        self.batch_size = batch_size
        self._ctx_x0 = self._ctx_cond = None
        self._ctx_block, self._ctx_sink = [], 0
        self.blocks_done = 0

    def _check(self, cond: Tensor) -> None:
        spec = self.model.spec
        want = (self.batch_size, self.frames_per_block, spec.cond_channels, self.height, self.width)
        if self.batch_size == 0:
            raise RefineError("push() before reset(); call refiner.reset(batch_size, seed) first")
        if not isinstance(cond, Tensor) or tuple(cond.shape) != want:
            got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise RefineError(f"cond {got} must be [B, F, C, H, W] = {want}: exactly one block")
        if cond.dtype != torch.float32:
            raise RefineError(f"cond dtype {cond.dtype} must be float32; convert with cond.float()")

    @torch.no_grad()
    def push(self, cond: Tensor, episodes: Tensor | None = None) -> Tensor:
        """cond [B, F, C_cond, H, W] float32 -> refined rgb [B, F, 3, H, W] in [0, 1]
        (latent=True: latents [B, F, C_out, H, W], unclamped). episodes [B, F]: per-row episode
        tags of the frames (a row reset mid-rollout, see reset_rows); None = each row's current."""
        self._check(cond)
        self._check_episodes(episodes, cond.shape[1])
        src_device = cond.device
        cond = cond.to(self.device)
        model = self.model
        f = self.frames_per_block
        shape = (f, model.spec.out_channels, self.height, self.width)

        noise = block_noise(self.sampler.cfg.noise, (self.batch_size, *shape),
                            lambda: draw_noise(self._gens, shape, self.device), self._static, self.device)

        start = model.coarse_x0(cond)  # [B, F, 3, H, W]
        if self.recompute:
            x0 = self.sampler.sample(lambda x, s, first: self._recompute_step(x, cond, s), start, noise)
            self._remember(x0, cond)
        else:
            def denoise(x: Tensor, sigma: float, first: bool) -> Tensor:
                t = torch.full((self.batch_size, f), 1000.0 * sigma, device=self.device)
                return model.forward_cached(x, cond, t, self.cache, "append" if first else "overwrite",
                                            episodes=episodes if first else None)

            x0 = self.sampler.sample(denoise, start, noise)
            if self.sampler.cfg.clean_pass:
                zero_t = torch.zeros(self.batch_size, f, device=self.device)
                model.forward_cached(x0, cond, zero_t, self.cache, "overwrite", write_only=True)  # clean K/V
        self.blocks_done += 1
        return model.from_diffusion(x0, cond, clamp=not self.latent).to(src_device)

    @torch.no_grad()
    def preview(self, cond: Tensor, episodes: Tensor | None = None) -> Tensor:
        """cond [B, k, C_cond, H, W], 1 <= k <= F: the frames gathered so far of the block being
        filled -> their refined rgb [B, k, 3, H, W] now, before the block is complete.

        A provisional k-frame block runs the sampler over the cache (no clean pass) and is dropped:
        the cache counters, the noise generators and `blocks_done` are left as they were, so the
        full block pushed later is refined bit-identically to a run without previews. The cache
        first evicts what the full block's append will (`KVCache.reserve`), so the provisional
        frames see the context the full block will see, minus the block's later frames."""
        spec = self.model.spec
        k = cond.shape[1] if isinstance(cond, Tensor) and cond.ndim == 5 else -1
        if self.recompute:
            raise RefineError("preview() needs the KV cache; build the Refiner with recompute=False")
        if not 1 <= k <= self.frames_per_block:
            raise RefineError(f"preview cond {tuple(getattr(cond, 'shape', ()))} must be [B, k, C, H, W] with "
                              f"1 <= k <= F = {self.frames_per_block}")
        full = torch.cat([cond, cond[:, -1:].expand(-1, self.frames_per_block - k, -1, -1, -1)], 1)
        self._check(full)  # the same shape, dtype and reset checks as push
        self._check_episodes(episodes, k)
        cond = cond.to(self.device)
        shape = (k, spec.out_channels, self.height, self.width)
        states = [g.get_state() for g in self._gens]  # a preview must not move the noise streams
        noise = block_noise(self.sampler.cfg.noise, (self.batch_size, *shape),
                            lambda: draw_noise(self._gens, shape, self.device), self._static, self.device)
        self.cache.reserve(self.frames_per_block)
        mark = self.cache.mark()
        try:
            def denoise(x: Tensor, sigma: float, first: bool) -> Tensor:
                t = torch.full((self.batch_size, k), 1000.0 * sigma, device=self.device)
                return self.model.forward_cached(x, cond, t, self.cache, "append" if first else "overwrite",
                                                 episodes=episodes if first else None)

            x0 = self.sampler.sample(denoise, self.model.coarse_x0(cond), noise)
        finally:
            self.cache.rollback(mark)
            for g, st in zip(self._gens, states):
                g.set_state(st)
        return self.model.from_diffusion(x0, cond, clamp=not self.latent)

    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Rows `rows` start new rollouts while the others go on (interactive autoreset): their noise
        streams restart from `seeds` (hashed as reset() hashes them). Tag their frames from now on
        with a new episode number in push/preview `episodes=`; the cache then keeps each row's
        episodes apart (KVCache.attention_mask) and refills the row's sinks from its new episode."""
        if self.recompute:
            raise RefineError("reset_rows() needs the KV cache; build the Refiner with recompute=False")
        if self.batch_size == 0:
            raise RefineError("reset_rows() before reset(); call refiner.reset(batch_size, seed) first")
        rows = [int(r) for r in rows]
        if len(rows) != len(seeds) or any(not 0 <= r < self.batch_size for r in rows):
            raise RefineError(f"reset_rows({rows}, {list(seeds)}): give one seed per row, rows in [0, {self.batch_size})")
        gens = make_generators(env_seeds(list(seeds), len(rows)), self.device)
        for r, g in zip(rows, gens):
            self._gens[r] = g
        if self._static is not None:
            shape = (len(self.sampler.sigmas), 1, self.model.spec.out_channels, self.height, self.width)
            self._static = self._static.clone()
            self._static[rows] = draw_noise(gens, shape, self.device)

    def _check_episodes(self, episodes: Tensor | None, frames: int) -> None:
        if episodes is not None and (not isinstance(episodes, Tensor) or tuple(episodes.shape) != (self.batch_size, frames)):
            raise RefineError(f"episodes {tuple(getattr(episodes, 'shape', ()))} must be a [B, F] = "
                              f"({self.batch_size}, {frames}) tensor of per-row episode tags")
        if episodes is not None and self.recompute:
            raise RefineError("per-row episodes need the KV cache; build the Refiner with recompute=False")

    def snapshot(self) -> RefinerState:
        """Everything the next push depends on: cache slots and counters, noise generator states,
        blocks done (and the recompute context). `restore` makes the following pushes bit-identical."""
        return RefinerState(self.batch_size, self.blocks_done, None if self.cache is None else self.cache.snapshot(),
                            [g.get_state() for g in self._gens], self._static, self._ctx_x0, self._ctx_cond,
                            list(self._ctx_block), self._ctx_sink)

    def restore(self, state: RefinerState) -> None:
        if state.batch_size != self.batch_size:
            raise RefineError(f"refiner state of batch {state.batch_size} does not fit this refiner (batch "
                              f"{self.batch_size}); reset(batch_size) first or restore into the refiner it came from")
        if state.cache is not None:
            self.cache.restore(state.cache)
        for g, st in zip(self._gens, state.generators):
            g.set_state(st)
        self.blocks_done, self._static = state.blocks_done, state.static
        self._ctx_x0, self._ctx_cond = state.ctx_x0, state.ctx_cond
        self._ctx_block, self._ctx_sink = list(state.ctx_block), state.ctx_sink

    def _recompute_step(self, x: Tensor, cond: Tensor, sigma: float) -> Tensor:
        """Dense forward over [sink + window context (t=0) | noisy block] -> block velocity."""
        f = self.frames_per_block
        if self._ctx_x0 is None:
            seq_x, seq_c, blocks = x, cond, []
        else:
            seq_x = torch.cat([self._ctx_x0, x], 1)  # [B, n + F, 3, H, W]
            seq_c = torch.cat([self._ctx_cond, cond], 1)
            blocks = self._ctx_block
        n = seq_x.shape[1]
        t = torch.zeros(self.batch_size, n, device=self.device)
        t[:, n - f:] = 1000.0 * sigma
        # positions are the cache slots 0..n-1; blocks keep their original numbers
        layout = FrameLayout(torch.arange(n), torch.tensor(blocks + [self.blocks_done] * f, dtype=torch.long),
                             torch.zeros(n, dtype=torch.bool))
        return self.model(seq_x, seq_c, t, layout=layout, use_window=False)[:, n - f:]

    def _remember(self, x0: Tensor, cond: Tensor) -> None:
        """Keep the same frames the cache would: all sinks, then the newest W - F window frames."""
        spec = self.model.spec
        f = self.frames_per_block
        if self._ctx_x0 is None:
            self._ctx_x0, self._ctx_cond = x0, cond
        else:
            self._ctx_x0 = torch.cat([self._ctx_x0, x0], 1)
            self._ctx_cond = torch.cat([self._ctx_cond, cond], 1)
        self._ctx_block += [self.blocks_done] * f
        self._ctx_sink = min(spec.sink_frames, self.frames_done + f)
        keep = spec.window_frames - f  # non-sink frames the next block can still see
        n, s = self._ctx_x0.shape[1], self._ctx_sink
        if n - s > keep:
            idx = list(range(s)) + list(range(n - keep, n))
            self._ctx_x0, self._ctx_cond = self._ctx_x0[:, idx], self._ctx_cond[:, idx]
            self._ctx_block = [self._ctx_block[i] for i in idx]

    def refine_video(self, cond: Tensor, seed: int | Sequence[int] = 0) -> Tensor:
        """cond [B, T, C_cond, H, W] -> rgb [B, T, 3, H, W]; a ragged last block is padded by
        repeating the last frame and cropped again."""
        if cond.ndim != 5:
            raise RefineError(f"cond {tuple(cond.shape)} must be [B, T, C, H, W]")
        b, t = cond.shape[:2]
        f = self.frames_per_block
        pad = (-t) % f
        if pad:
            cond = torch.cat([cond, cond[:, -1:].expand(-1, pad, -1, -1, -1)], 1)
        self.reset(b, seed)
        out = [self.push(cond[:, i:i + f].contiguous()) for i in range(0, t + pad, f)]
        return torch.cat(out, 1)[:, :t]


@dataclass
class RefinerState:
    """A Refiner's rollout state (Refiner.snapshot); tensors are copies or never written in place."""

    batch_size: int
    blocks_done: int
    cache: CacheSnapshot | None
    generators: list[Tensor]  # torch.Generator.get_state() per env
    static: Tensor | None  # noise="static" fields [B, steps, 1, C, H, W]
    ctx_x0: Tensor | None  # recompute context [B, n, 3, H, W]
    ctx_cond: Tensor | None  # [B, n, Cc, H, W]
    ctx_block: list[int]
    ctx_sink: int

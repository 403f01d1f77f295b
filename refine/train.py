"""Training: teacher forcing, few-step specialisation, optional self-rollout; resumable.

clips: a map-style dataset (len + getitem) of (cond [T, C, H, W], target [T, 3, H, W]) pairs.
Phase 1 draws one sigma per block from the shifted uniform distribution, phase 2 from the
sampler's sigma list, both through one teacher-forcing forward over [clean context | noisy]
(refine.layout). Phase 3 rolls the sampler out through the KV cache and back-propagates a
supervised x0 loss at one random exit step per block (see NOTES.md for whether it helps).

Checkpoints: out_dir/checkpoints/step-XXXXXX/{config.json, diffusion_pytorch_model.safetensors,
trainer.safetensors (optimizer tensors + RNG state), state.json}, written to a temp folder and
renamed; out_dir/checkpoints/latest names the newest. Loss log: out_dir/loss.jsonl.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import Tensor

from refine.checkpoint import atomic_write_bytes, check_state_dict, read_json, read_safetensors, WEIGHTS_NAME
from refine.config import CHARBONNIER_EPS, TrainConfig
from refine.errors import RefineError
from refine.layout import FrameLayout
from refine.model import SAMPLE_MIN_SIGMA
from refine.sampler import block_noise, sigma_schedule


@dataclass(frozen=True)
class TrainResult:
    start_step: int  # step resumed from (0 for a fresh run)
    end_step: int
    final_loss: float
    model_dir: Path | None  # out_dir/model once all steps are done
    checkpoint_dir: Path | None


def _phase(step: int, cfg: TrainConfig) -> int:
    if step < cfg.phase1_steps:
        return 1
    return 2 if step < cfg.phase1_steps + cfg.phase2_steps else 3


def _lr(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def _check_clips(clips: Sequence, model) -> None:
    if not hasattr(clips, "__len__") or not hasattr(clips, "__getitem__") or len(clips) == 0:
        raise RefineError("clips must be a non-empty map-style dataset (len + getitem) of (cond, target) "
                          "pairs; wrap an iterable in list(...)")
    cond, target = clips[0]
    spec = model.spec
    if cond.ndim != 4 or target.ndim != 4 or cond.shape[0] != target.shape[0] \
            or cond.shape[1] != spec.cond_channels or target.shape[1] != spec.out_channels:
        raise RefineError(f"clip 0: cond {tuple(cond.shape)} / target {tuple(target.shape)} must be "
                          f"[T, {spec.cond_channels}, H, W] / [T, {spec.out_channels}, H, W]")


def _batch(clips: Sequence, cfg: TrainConfig, f: int, gen: torch.Generator) -> tuple[Tensor, Tensor, list[int]]:
    """-> cond [B, T, C, H, W], target [B, T, 3, H, W], T a multiple of F; the clips' indices."""
    idx = torch.randint(len(clips), (cfg.batch_size,), generator=gen).tolist()
    conds, targets = [], []
    for i in idx:
        cond, target = clips[i]
        t = cond.shape[0]
        n = cfg.clip_frames or t - t % f
        if n % f or n > t or n == 0:
            raise RefineError(f"clip {i} has {t} frames; clip_frames={cfg.clip_frames} must be a multiple "
                              f"of frames_per_block={f} and <= every clip's length")
        start = int(torch.randint(t - n + 1, (1,), generator=gen))
        conds.append(cond[start:start + n].float())
        targets.append(target[start:start + n].float())
    if len({c.shape for c in conds}) != 1:
        raise RefineError("clips in a batch differ in shape; set TrainConfig.clip_frames to crop them equally")
    return torch.stack(conds), torch.stack(targets), idx


def _non_finite_clips(clips: Sequence, idx: list[int]) -> list[str]:
    """The clips among idx holding NaN or inf, named by the data set's `describe(i)` if it has one."""
    name = getattr(clips, "describe", lambda i: f"clip {i}")
    return [name(i) for i in dict.fromkeys(idx) if not all(bool(torch.isfinite(torch.as_tensor(t)).all())
                                                          for t in clips[i])]


def _block_sigmas(b: int, n_blocks: int, phase: int, cfg: TrainConfig, sig_list: list[float],
                  gen: torch.Generator) -> Tensor:
    """One sigma per (env, block) -> [B, n_blocks]."""
    if phase == 1:
        u = torch.rand(b, n_blocks, generator=gen).clamp(1e-3, 1.0)
        s = cfg.sampler.shift
        return s * u / (1 + (s - 1) * u)
    table = torch.tensor(sig_list)
    return table[torch.randint(len(sig_list), (b, n_blocks), generator=gen)]


def ssim_loss(pred: Tensor, target: Tensor, window: int = 7) -> Tensor:
    """1 - mean SSIM of RGB frames in [0, 1]: [B, T, 3, H, W] x2 -> scalar.

    Uniform 7x7 windows, K1 = 0.01, K2 = 0.03 and the unbiased variance, as skimage's
    `structural_similarity` (the metric eval-refiner reports); valid windows only.
    """
    x, y = pred.flatten(0, 1).float(), target.flatten(0, 1).float()  # [N, 3, H, W]

    def mean(z: Tensor) -> Tensor:
        return Fn.avg_pool2d(z, window, stride=1)

    n = window * window
    mx, my = mean(x), mean(y)
    vx = (mean(x * x) - mx * mx) * n / (n - 1)
    vy = (mean(y * y) - my * my) * n / (n - 1)
    cxy = (mean(x * y) - mx * my) * n / (n - 1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1.0 - ssim.mean()


def pixel_loss(pred: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Mean per-element loss: "mse", or "charbonnier" = mean(sqrt(d^2 + eps^2) - eps), an L1 whose
    gradient keeps its size as the error shrinks (so faint texture on a flat surface is pushed to 0)."""
    if kind == "mse":
        return Fn.mse_loss(pred, target)
    if kind == "charbonnier":
        d = pred - target
        return (torch.sqrt(d * d + CHARBONNIER_EPS ** 2) - CHARBONNIER_EPS).mean()
    raise RefineError(f"pixel loss {kind!r} is not 'mse' or 'charbonnier'")


def temporal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of frame-to-frame changes: [B, T, C, H, W] x2 -> scalar (T >= 2)."""
    return Fn.mse_loss(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1])


def gradient_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the horizontal and vertical neighbour differences of two image
    stacks [..., C, H, W]. An edge that is softer, shifted or missing (a blurred shadow border or
    silhouette) costs its full contrast here, where MSE forgives a soft edge; it is what FLIP sees."""
    dx = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def _image_terms(model, x0_hat: Tensor, cond: Tensor, target: Tensor, ssim_weight: float,
                 grad_weight: float) -> Tensor | float:
    """ssim_weight * (1 - SSIM) + grad_weight * gradient_loss of the predicted frames in RGB."""
    if not (ssim_weight or grad_weight):
        return 0.0
    rgb = model.from_diffusion(x0_hat, cond, clamp=False)
    out = ssim_weight * ssim_loss(rgb, target) if ssim_weight else 0.0
    return out + grad_weight * gradient_loss(rgb, target) if grad_weight else out


def _noise(shape: tuple[int, ...], gen: torch.Generator, static: bool) -> Tensor:
    """Standard normal [B, T, C, H, W]; static: one field per env shared by all T frames."""
    if static:
        return torch.randn((shape[0], 1, *shape[2:]), generator=gen).expand(shape)
    return torch.randn(shape, generator=gen)


def teacher_forcing_loss(model, cond: Tensor, target: Tensor, sigma_blocks: Tensor, ctx_sigma: Tensor,
                         gen: torch.Generator, ssim_weight: float = 0.0, temporal_weight: float = 0.0,
                         static_noise: bool = False, kind: str = "mse", grad_weight: float = 0.0) -> Tensor:
    """Flow-matching loss (pixel_loss `kind`) of one teacher-forcing forward (+ ssim_weight * (1 - SSIM) of x0_hat
    + grad_weight * gradient_loss of x0_hat + temporal_weight * temporal_loss of x0_hat).

    cond [B, T, C, H, W]; target [B, T, 3, H, W]; sigma_blocks, ctx_sigma [B, T/F]. static_noise:
    the noisy frames share one noise field per env, as the sampler's noise="static" draws it.
    """
    f = model.spec.frames_per_block
    b, t = target.shape[:2]
    dev = target.device
    x0 = model.to_diffusion(target, cond)  # [B, T, 3, H, W]
    noise = _noise(tuple(x0.shape), gen, static_noise).to(dev)
    ctx_noise = torch.randn(x0.shape, generator=gen).to(dev)
    sig = sigma_blocks.repeat_interleave(f, dim=1).to(dev)  # [B, T]
    csig = ctx_sigma.repeat_interleave(f, dim=1).to(dev)
    s5, c5 = sig[:, :, None, None, None], csig[:, :, None, None, None]
    noisy = (1 - s5) * x0 + s5 * noise
    clean = (1 - c5) * x0 + c5 * ctx_noise
    v = model(torch.cat([clean, noisy], 1), torch.cat([cond, cond], 1), 1000.0 * torch.cat([csig, sig], 1),
              layout=FrameLayout.teacher_forcing(t, f))[:, t:]  # [B, T, 3, H, W]
    if model.spec.prediction == "sample":  # x0 loss (= v loss weighted by sigma^2): bounded at small sigma
        x0_hat = noisy - s5.clamp(min=SAMPLE_MIN_SIGMA) * v
        loss = pixel_loss(x0_hat, x0, kind)
    else:
        x0_hat = noisy - s5 * v
        loss = pixel_loss(v, noise - x0, kind)
    loss = loss + _image_terms(model, x0_hat, cond, target, ssim_weight, grad_weight)
    if temporal_weight and t > 1:
        loss = loss + temporal_weight * temporal_loss(x0_hat, x0)
    return loss


def direct_loss(model, cond: Tensor, target: Tensor, sigma: float, ssim_weight: float = 0.0,
                temporal_weight: float = 0.0, kind: str = "mse", grad_weight: float = 0.0) -> Tensor:
    """The loss of exactly what a one-step, noise-free sampler without a clean pass computes.

    With sampler sigmas (s,), noise="zero" and clean_pass=False every block enters the model as the
    coarse render scaled to s, at t = 1000 s, and the cached context is the K/V those same forwards
    wrote: the whole rollout is one block-causal dense forward (sinks, window and cache-relative
    positions included: `forward(use_window=True)`, the cache's reference). Training it needs no
    noise, no teacher forcing and no context copy, and there is no gap between training and
    inference. (Teacher forcing instead feeds (1 - s) x0 + s noise, the *target* barely noised: at
    s = 0.1 a model learns to keep its input, and at inference, where the input is the coarse
    render, it then returns the coarse render nearly unchanged.)
    """
    b, t = target.shape[:2]
    x0 = model.to_diffusion(target, cond)
    x = (1.0 - sigma) * model.coarse_x0(cond)
    ts = torch.full((b, t), 1000.0 * sigma, device=target.device)
    v = model(x, cond, ts)
    x0_hat = x - max(sigma, SAMPLE_MIN_SIGMA) * v if model.spec.prediction == "sample" else x - sigma * v
    loss = pixel_loss(x0_hat, x0, kind)
    loss = loss + _image_terms(model, x0_hat, cond, target, ssim_weight, grad_weight)
    if temporal_weight and t > 1:
        loss = loss + temporal_weight * temporal_loss(x0_hat, x0)
    return loss


def direct_training(sampler) -> bool:
    """The sampler is one noise-free step without a clean pass: `direct_loss` trains it exactly."""
    return not sampler.clean_pass and sampler.noise == "zero" and len(sigma_schedule(sampler)) == 1


def rollout_loss(model, cond: Tensor, target: Tensor, sig_list: list[float], gen: torch.Generator,
                 ssim_weight: float = 0.0, temporal_weight: float = 0.0, static_noise: bool = False,
                 zero_noise: bool = False, kind: str = "mse", clean_pass: bool = True,
                 grad_weight: float = 0.0) -> Tensor:
    """Self-rollout through the KV cache; supervised x0 loss (pixel_loss `kind`) at one random exit step per block
    (+ the SSIM and gradient terms, + the temporal term within the block and against the previous
    block's last refined frame).

    Gradients flow through the exit step's forward only (earlier steps, the clean passes and
    the cached context are computed without gradient), and are accumulated block by block.
    static_noise / zero_noise: draw the noise as the sampler's noise="static" / "zero" does.
    Returns the mean loss (already back-propagated).
    """
    f = model.spec.frames_per_block
    b, t, _, h, w = target.shape
    dev = target.device
    x0_target = model.to_diffusion(target, cond)
    cache = model.new_cache(b, h, w)
    n_blocks, total = t // f, 0.0
    block = (b, f, target.shape[2], h, w)
    fields = _noise((b, len(sig_list), *block[2:]), gen, False)[:, :, None] if static_noise else None

    noise_kind = "zero" if zero_noise else "static" if static_noise else "fresh"
    noise = block_noise(noise_kind, block, lambda: torch.randn(block, generator=gen).to(dev), fields, dev)

    prev = None  # previous block's last refined frame and its target, [B, 1, 3, H, W] each
    for i in range(n_blocks):
        c, tgt = cond[:, i * f:(i + 1) * f], x0_target[:, i * f:(i + 1) * f]
        exit_k = int(torch.randint(len(sig_list), (1,), generator=gen))
        start = model.coarse_x0(c)
        x = (1 - sig_list[0]) * start + sig_list[0] * noise(0)
        for k, s in enumerate(sig_list[:exit_k + 1]):
            tt = torch.full((b, f), 1000.0 * s, device=dev)
            mode = "append" if k == 0 else "overwrite"
            if k < exit_k:
                with torch.no_grad():
                    x0 = x - s * model.forward_cached(x, c, tt, cache, mode)
                    x = (1 - sig_list[k + 1]) * x0 + sig_list[k + 1] * noise(k + 1)
            else:
                cache.detach_()
                x0 = x - s * model.forward_cached(x, c, tt, cache, mode)
                loss = pixel_loss(x0, tgt, kind)
                loss = loss + _image_terms(model, x0, c, target[:, i * f:(i + 1) * f], ssim_weight, grad_weight)
                if temporal_weight:
                    seq, ref = (x0, tgt) if prev is None else (torch.cat([prev[0], x0], 1), torch.cat([prev[1], tgt], 1))
                    if seq.shape[1] > 1:
                        loss = loss + temporal_weight * temporal_loss(seq, ref)
                (loss / n_blocks).backward()
                total += float(loss.detach())
        with torch.no_grad():
            cache.detach_()
            if clean_pass:
                model.forward_cached(x0.detach(), c, torch.zeros(b, f, device=dev), cache, "overwrite", write_only=True)
            else:  # the context is what the sampler's last step writes: finish the steps after the exit
                x0 = x0.detach()
                for k in range(exit_k + 1, len(sig_list)):
                    x = (1 - sig_list[k]) * x0 + sig_list[k] * noise(k)
                    tt = torch.full((b, f), 1000.0 * sig_list[k], device=dev)
                    x0 = x - sig_list[k] * model.forward_cached(x, c, tt, cache, "overwrite")
        prev = (x0.detach()[:, -1:], tgt[:, -1:])
    return torch.tensor(total / n_blocks)


# ---- checkpoints ------------------------------------------------------------------------------

def _save_checkpoint(root: Path, step: int, model, opt: torch.optim.Optimizer, gen: torch.Generator,
                     cfg: TrainConfig) -> Path:
    from safetensors.torch import save_file

    ckpt_root = root / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        model.save_pretrained(tmp)
        sd = opt.state_dict()
        tensors = {"rng.train": gen.get_state()}
        for pid, st in sd["state"].items():
            for key, val in st.items():
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous() if torch.is_tensor(val) \
                    else torch.tensor(val)
        save_file(tensors, str(tmp / "trainer.safetensors"))
        state = {"step": step, "param_groups": sd["param_groups"], "config": asdict(cfg)}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_bytes(ckpt_root / "latest", name.encode())
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for p in old[:-cfg.keep_checkpoints]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load_checkpoint(root: Path, model, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    """Restore model, optimizer and RNG from root/checkpoints/latest; returns its step (0 if none)."""
    latest = root / "checkpoints" / "latest"
    if not latest.is_file():
        return 0
    ckpt = root / "checkpoints" / latest.read_text().strip()
    state = read_json(ckpt / "state.json", "training state")
    weights = read_safetensors(ckpt / WEIGHTS_NAME, "checkpoint weights")
    check_state_dict(model, weights, ckpt / WEIGHTS_NAME)
    model.load_state_dict(weights, strict=True)
    tensors = read_safetensors(ckpt / "trainer.safetensors", "trainer state")
    optim_state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = val
    try:
        opt.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
        gen.set_state(tensors["rng.train"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise RefineError(f"checkpoint {ckpt} does not fit this model/optimizer ({err}); start a fresh "
                          "out_dir or use the same model config") from err
    return int(state["step"])


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _trainable(model, prefixes: tuple[str, ...]) -> list:
    """The parameters to train: all (flags untouched), or those named with one of `prefixes`, the
    others then frozen (requires_grad False) so that no gradient is computed through them."""
    if not prefixes:
        return list(model.parameters())
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise RefineError(f"train_only={prefixes} names no parameter of this model; its modules: {tops}")
    return chosen


def train(model, clips: Sequence, cfg: TrainConfig, out_dir: str | Path, stop_after: int | None = None) -> TrainResult:
    """Train `model` in place; resumes from out_dir/checkpoints/latest if present.

    stop_after: return after this global step (e.g. to split a run); the run can be resumed.
    """
    from tqdm import tqdm

    _check_clips(clips, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(cfg.device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    flags = [p.requires_grad for p in model.parameters()]  # train_only freezes; restored at the end
    try:
        params = _trainable(model, cfg.train_only)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        start = _load_checkpoint(out, model, opt, gen)
        log_path = out / "loss.jsonl"
        _trim_log(log_path, start)
        sig_list = sigma_schedule(cfg.sampler)
        static = cfg.sampler.noise == "static"  # train on the noise the sampler will draw
        # noise="zero" samples deterministically: teacher forcing still needs noisy inputs (fresh noise),
        # while the self-rollout phase runs exactly the sampler's noise-free steps
        zero = cfg.sampler.noise == "zero"
        direct = direct_training(cfg.sampler)  # phase 2 then trains exactly the inference computation
        f = model.spec.frames_per_block
        end = cfg.total_steps if stop_after is None else min(cfg.total_steps, stop_after)
        loss_val, ckpt = float("nan"), None
        bar = tqdm(total=cfg.total_steps, initial=start, disable=not cfg.progress, desc="refine train")
        with log_path.open("a") as log:
            for step in range(start, end):
                phase = _phase(step, cfg)
                for group in opt.param_groups:
                    group["lr"] = _lr(step, cfg)
                cond, target, idx = _batch(clips, cfg, f, gen)
                cond, target = cond.to(dev), target.to(dev)
                if phase == 2 and direct:
                    loss = direct_loss(model, cond, target, sig_list[0], cfg.ssim_weight, cfg.temporal_weight,
                                       kind=cfg.loss, grad_weight=cfg.grad_weight)
                    loss.backward()
                elif phase == 3:
                    loss = rollout_loss(model, cond, target, sig_list, gen, cfg.ssim_weight, cfg.temporal_weight,
                                        static_noise=static, zero_noise=zero, kind=cfg.loss,
                                        clean_pass=cfg.sampler.clean_pass, grad_weight=cfg.grad_weight)
                else:
                    n_blocks = target.shape[1] // f
                    sig = _block_sigmas(target.shape[0], n_blocks, phase, cfg, sig_list, gen)
                    ctx = torch.rand(target.shape[0], n_blocks, generator=gen) * cfg.context_noise
                    late = phase == 2
                    loss = teacher_forcing_loss(model, cond, target, sig, ctx, gen,
                                                cfg.ssim_weight if late else 0.0, cfg.temporal_weight if late else 0.0,
                                                static_noise=static, kind=cfg.loss,
                                                grad_weight=cfg.grad_weight if late else 0.0)
                    loss.backward()
                loss_val = float(loss.detach())
                if not math.isfinite(loss_val):
                    bad = _non_finite_clips(clips, idx)
                    if bad:
                        raise RefineError(f"loss became {loss_val} at step {step}: {', '.join(bad)} hold(s) NaN or "
                                          "inf; remake or remove that clip")
                    raise RefineError(f"loss became {loss_val} at step {step}; lower TrainConfig.lr={cfg.lr}")
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                log.write(json.dumps({"step": step, "phase": phase, "loss": loss_val, "lr": _lr(step, cfg)}) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4f}", phase=phase)
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
                    ckpt = _save_checkpoint(out, step + 1, model, opt, gen, cfg)
        bar.close()
    finally:  # hand the model back as it came, also when a step fails
        model.eval()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    model_dir = None
    if end == cfg.total_steps:
        model_dir = out / "model"
        model.save_pretrained(model_dir)
    return TrainResult(start, end, loss_val, model_dir, ckpt)

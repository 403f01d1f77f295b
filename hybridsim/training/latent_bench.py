"""`hybridsim bench sections=latent clips=<folder>`: pixel space or a learned latent space, measured.

On the paired clips that `hybridsim train-refiner` makes (its out/clips folder), with the last
tenth of the scenes held out:
- trains refine.autoencoder.FrameAutoencoder on the training scenes' target frames for `ae_steps`
  steps and times it (CPU seconds);
- its reconstruction PSNR / SSIM on the held-out targets: an upper bound for any refiner that
  works in that latent space (it cannot beat decode(encode(target)));
- the shipped pixel-space refiner on the held-out clips (PSNR / SSIM of refined and coarse);
- ms per frame of the refiner and of the autoencoder's encode and decode, side by side;
- with `space_steps=N`: the same transformer trained from scratch for N steps in each space
  (`compare_spaces`), scored on the held-out scenes, with the CPU seconds each took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsim.scenario.spec import SpecError


@dataclass
class LatentBench:
    clips_dir: str
    train_scenes: int
    held_out_scenes: int
    held_out_frames: int
    ae_params: int
    ae_latent: list  # [C, H/4, W/4] per frame
    ae_steps: int
    ae_train_cpu_s: float
    ae_final_loss: float
    ae_psnr: float  # decode(encode(target)) vs target, held out: the latent refiner's ceiling
    ae_ssim: float
    pixel_psnr: float  # the shipped pixel-space refiner, held out
    pixel_ssim: float
    coarse_psnr: float
    coarse_ssim: float
    refine_ms_per_frame: float
    encode_ms_per_frame: float
    decode_ms_per_frame: float


def scene_files(clips_dir: str) -> list[Path]:
    files = sorted(Path(clips_dir).expanduser().glob("scene_*.npz"))
    if len(files) < 2:
        raise SpecError("bench clips", f"'{clips_dir}' holds {len(files)} scene_*.npz files, the latent section "
                        "needs >= 2 (train + held out); make them with `hybridsim train-refiner out=X` and pass "
                        "clips=X/clips")
    return files


def _split(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """-> (training scenes, held-out scenes): the last tenth (at least one) is held out."""
    n_held = max(1, len(files) // 10)
    return files[:-n_held], files[-n_held:]


@dataclass
class FittedAutoencoder:
    model: object  # refine.autoencoder.FrameAutoencoder, trained, in eval mode
    steps: int
    cpu_s: float  # process CPU seconds of its training
    final_loss: float  # mean of the last 20 steps


def fit_autoencoder(clips_dir: str, steps: int = 800, seed: int = 0, progress: bool = True) -> FittedAutoencoder:
    """Train the FrameAutoencoder (8 x H/4 x W/4 latents) on the training scenes' target frames."""
    import torch
    from refine.autoencoder import FrameAutoencoder, train_autoencoder

    train_files, _ = _split(scene_files(clips_dir))
    targets = []
    for f in train_files:  # targets only: [clips, T, H, W, 3] uint8 per scene
        with np.load(f) as z:
            targets.append(z["target"].reshape(-1, *z["target"].shape[2:]))
    frames = torch.from_numpy(np.concatenate(targets)).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    torch.manual_seed(seed)
    ae = FrameAutoencoder(latent_channels=8, hidden=32)
    c0 = time.process_time()
    losses = train_autoencoder(ae, frames, steps, batch_size=8, seed=seed, progress=progress)
    return FittedAutoencoder(ae, steps, time.process_time() - c0, float(np.mean(losses[-20:])))


def _quality(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """uint8 frames [N, H, W, 3] x2 -> mean per-frame PSNR (dB), SSIM (skimage's definitions)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = [peak_signal_noise_ratio(t, x, data_range=255) for x, t in zip(pred, target)]
    s = [structural_similarity(t, x, data_range=255, channel_axis=-1) for x, t in zip(pred, target)]
    return float(np.mean(p)), float(np.mean(s))


def _u8(x) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] (torch) -> uint8 [N, H, W, 3]"""
    return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def bench_latent(clips_dir: str, ae_steps: int = 800, seed: int = 0, progress: bool = True,
                 fitted: FittedAutoencoder | None = None) -> LatentBench:
    """fitted: an autoencoder already trained by fit_autoencoder on these clips (else trained here)."""
    from refine import Refiner
    from refine.autoencoder import codec_ms_per_frame, reconstruct

    from hybridsim.config import RefineSettings
    from hybridsim.training.refine_data import ClipDataset
    from hybridsim.refining import load_model, sampler_config

    train_files, held_files = _split(scene_files(clips_dir))
    fitted = fitted or fit_autoencoder(clips_dir, ae_steps, seed, progress)
    ae = fitted.model
    model, folder = load_model(RefineSettings(), "cpu")
    refiner = Refiner(model, sampler_config(RefineSettings(), folder))
    held = ClipDataset(held_files, channels=model.spec.cond_channels)
    refined, coarse, target, recon = [], [], [], []
    refine_s = 0.0
    for i in range(len(held)):
        cond, tgt = held[i]  # [T, C, H, W], [T, 3, H, W]
        t0 = time.perf_counter()
        refined.append(_u8(refiner.refine_video(cond[None], seed=seed + i)[0]))
        refine_s += time.perf_counter() - t0
        coarse.append(_u8(cond[:, :3]))
        target.append(_u8(tgt))
        recon.append(_u8(reconstruct(ae, tgt)))
    target_all = np.concatenate(target)
    ae_q, pix_q, coarse_q = (_quality(np.concatenate(x), target_all) for x in (recon, refined, coarse))
    h, w = target_all.shape[1:3]
    codec = codec_ms_per_frame(ae, h, w, frames=model.spec.frames_per_block)
    return LatentBench(str(clips_dir), len(train_files), len(held_files), len(target_all),
                       sum(p.numel() for p in ae.parameters()), [8, h // 4, w // 4], fitted.steps, fitted.cpu_s,
                       fitted.final_loss, *ae_q, *pix_q, *coarse_q,
                       1e3 * refine_s / len(target_all), codec["encode"], codec["decode"])


def latent_markdown(b: LatentBench) -> list[str]:
    return [f"\n## latent or pixel space ({b.train_scenes} training / {b.held_out_scenes} held-out scenes of "
            f"{b.clips_dir}, {b.held_out_frames} held-out frames)\n",
            "| what | PSNR dB | SSIM | ms per frame |", "|---|---|---|---|",
            f"| coarse splat render | {b.coarse_psnr:.2f} | {b.coarse_ssim:.3f} | |",
            f"| pixel-space refiner (shipped) | **{b.pixel_psnr:.2f}** | **{b.pixel_ssim:.3f}** | "
            f"{b.refine_ms_per_frame:.0f} |",
            f"| autoencoder reconstruction ({b.ae_params} params, latent {b.ae_latent}, {b.ae_steps} steps, "
            f"{b.ae_train_cpu_s:.0f} CPU s): ceiling of a latent refiner | {b.ae_psnr:.2f} | {b.ae_ssim:.3f} | "
            f"encode {b.encode_ms_per_frame:.1f} + decode {b.decode_ms_per_frame:.1f} on top of the refiner |"]


# ---- equal-budget training: a pixel-space and a latent-space refiner from scratch ---------------

@dataclass
class SpaceRun:
    space: str  # "pixel" or "latent"
    steps: int
    train_cpu_s: float
    psnr: float  # held out, decoded to RGB for the latent model
    ssim: float
    ms_per_frame: float  # refining (and, for latent, encoding the coarse render and decoding)


def _latent_clip(ae, cond, target):
    """Pixel clip (cond [T, 14, H, W], target [T, 3, H, W]) -> latent clip
    (cond [T, C + 11, H/4, W/4]: encoded coarse RGB | pooled G-buffer rest; target [T, C, H/4, W/4])."""
    import torch
    import torch.nn.functional as Fn

    with torch.no_grad():
        rest = Fn.avg_pool2d(cond[:, 3:], 4)  # depth, alpha, flow, shading cues at latent resolution
        return torch.cat([ae.encode(cond[:, :3].clamp(0, 1)), rest], 1), ae.encode(target)


def _space_config(space: str, latent_channels: int, h: int, w: int):
    """The shipped model's transformer (dim, layers, heads, F, window) in either space, 256 tokens/frame at 128²."""
    from refine import ModelConfig
    from refine.conditioning import COND_CHANNELS, SHADING_CHANNELS

    c = COND_CHANNELS + SHADING_CHANNELS
    if space == "pixel":
        spec = ModelConfig(sample_height=h, sample_width=w, cond_channels=c, prediction="sample", head_channels=16)
    else:  # 4x smaller latents, 2x2 patches: the same token grid as 8x8 pixel patches
        spec = ModelConfig(sample_height=h // 4, sample_width=w // 4, patch_size=2, out_channels=latent_channels,
                           cond_channels=latent_channels + c - 3, prediction="sample", head_channels=0)
    return spec


def compare_spaces(clips_dir: str, steps: int, ae_steps: int = 800, seed: int = 0,
                   sigmas: tuple[float, ...] = (0.2, 0.1, 0.05), progress: bool = True,
                   fitted: FittedAutoencoder | None = None) -> list[SpaceRun]:
    """Train the same transformer from scratch in pixel space and in the latent space of a
    FrameAutoencoder (`fitted`, else trained here), `steps` teacher-forcing steps each on the
    training scenes, and score both on the held-out scenes. The latent run's CPU time includes
    its autoencoder's training."""
    import tempfile

    import torch
    from refine import Refiner, SamplerConfig, TrainConfig
    from refine.model import CausalWanRefiner
    from refine.train import train

    from hybridsim.training.refine_data import ClipDataset

    train_files, held_files = _split(scene_files(clips_dir))
    pix_train, pix_held = ClipDataset(train_files), ClipDataset(held_files)
    held = [pix_held[i] for i in range(len(pix_held))]
    h, w = held[0][0].shape[-2:]
    sampler = SamplerConfig(sigmas=sigmas)
    fitted = fitted or fit_autoencoder(clips_dir, ae_steps, seed, progress)  # its CPU time is counted below
    runs = []
    for space in ("pixel", "latent"):
        c0 = time.process_time()
        data, ae, ae_cpu = pix_train, None, 0.0
        if space == "latent":
            ae, ae_cpu = fitted.model, fitted.cpu_s
            data = [_latent_clip(ae, *pix_train[i]) for i in range(len(pix_train))]
        torch.manual_seed(seed)
        model = CausalWanRefiner.from_spec(_space_config(space, 8, h, w))
        cfg = TrainConfig(phase1_steps=steps, phase2_steps=0, batch_size=2, clip_frames=6, seed=seed,
                          checkpoint_every=10**9, progress=progress)
        with tempfile.TemporaryDirectory() as tmp:
            train(model, data, cfg, tmp)
        cpu = time.process_time() - c0 + ae_cpu
        refiner = Refiner(model, sampler, latent=ae is not None)
        pred, target, wall = [], [], 0.0
        for i, (cond, tgt) in enumerate(held):
            t0 = time.perf_counter()
            if ae is None:
                x = refiner.refine_video(cond[None], seed=seed + i)[0]
            else:
                with torch.no_grad():
                    x = ae.decode(refiner.refine_video(_latent_clip(ae, cond, tgt)[0][None], seed=seed + i)[0])
            wall += time.perf_counter() - t0
            pred.append(_u8(x))
            target.append(_u8(tgt))
        q = _quality(np.concatenate(pred), np.concatenate(target))
        runs.append(SpaceRun(space, steps, cpu, *q, 1e3 * wall / sum(len(t) for t in target)))
    return runs


def spaces_markdown(runs: list[SpaceRun]) -> list[str]:
    lines = ["\n### same transformer trained from scratch in each space, equal steps (held-out scenes)\n",
             "| space | steps | training CPU s (latent: incl. its autoencoder) | PSNR dB | SSIM | ms per frame |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.space} | {r.steps} | {r.train_cpu_s:.0f} | {r.psnr:.2f} | {r.ssim:.3f} | "
                     f"{r.ms_per_frame:.0f} |")
    return lines

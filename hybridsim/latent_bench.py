"""`hybridsim bench sections=latent clips=<folder>`: pixel space or a learned latent space, measured.

On the paired clips that `hybridsim train-refiner` makes (its out/clips folder), with the last
tenth of the scenes held out:
- trains refine.autoencoder.FrameAutoencoder on the training scenes' target frames for `ae_steps`
  steps and times it (CPU seconds);
- its reconstruction PSNR / SSIM on the held-out targets: an upper bound for any refiner that
  works in that latent space (it cannot beat decode(encode(target)));
- the shipped pixel-space refiner on the held-out clips (PSNR / SSIM of refined and coarse);
- ms per frame of the refiner and of the autoencoder's encode and decode, side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsim.spec import SpecError


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


def _scene_files(clips_dir: str) -> list[Path]:
    files = sorted(Path(clips_dir).expanduser().glob("scene_*.npz"))
    if len(files) < 2:
        raise SpecError("bench clips", f"'{clips_dir}' holds {len(files)} scene_*.npz files, the latent section "
                        "needs >= 2 (train + held out); make them with `hybridsim train-refiner out=X` and pass "
                        "clips=X/clips")
    return files


def _quality(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """uint8 frames [N, H, W, 3] x2 -> mean per-frame PSNR (dB), SSIM (skimage's definitions)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = [peak_signal_noise_ratio(t, x, data_range=255) for x, t in zip(pred, target)]
    s = [structural_similarity(t, x, data_range=255, channel_axis=-1) for x, t in zip(pred, target)]
    return float(np.mean(p)), float(np.mean(s))


def _u8(x) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] (torch) -> uint8 [N, H, W, 3]"""
    return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def bench_latent(clips_dir: str, ae_steps: int = 800, seed: int = 0, progress: bool = True) -> LatentBench:
    import torch
    from refine import Refiner
    from refine.autoencoder import FrameAutoencoder, codec_ms_per_frame, reconstruct, train_autoencoder

    from hybridsim.config import RefineSettings
    from hybridsim.refine_data import ClipDataset
    from hybridsim.refining import load_model, sampler_config

    files = _scene_files(clips_dir)
    n_held = max(1, len(files) // 10)
    train_files, held_files = files[:-n_held], files[-n_held:]
    targets = []
    for f in train_files:  # targets only: [clips, T, H, W, 3] uint8 per scene
        with np.load(f) as z:
            targets.append(z["target"].reshape(-1, *z["target"].shape[2:]))
    frames = torch.from_numpy(np.concatenate(targets)).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    torch.manual_seed(seed)
    ae = FrameAutoencoder(latent_channels=8, hidden=32)
    c0 = time.process_time()
    losses = train_autoencoder(ae, frames, ae_steps, batch_size=8, seed=seed, progress=progress)
    ae_cpu = time.process_time() - c0

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
    h, w = frames.shape[-2:]
    codec = codec_ms_per_frame(ae, h, w, frames=model.spec.frames_per_block)
    return LatentBench(str(clips_dir), len(train_files), n_held, len(target_all),
                       sum(p.numel() for p in ae.parameters()), [8, h // 4, w // 4], ae_steps, ae_cpu,
                       float(np.mean(losses[-20:])), *ae_q, *pix_q, *coarse_q,
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

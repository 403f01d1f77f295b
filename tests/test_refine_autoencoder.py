"""FrameAutoencoder: shapes, a training run that learns, save/load, and clear errors."""

from __future__ import annotations

import pytest
import torch

from refine import RefineError
from refine.autoencoder import FrameAutoencoder, codec_ms_per_frame, reconstruct, train_autoencoder
from refine.testing import synthetic_clips


def _frames() -> torch.Tensor:
    return torch.cat([target for _, target in synthetic_clips(6, 4, seed=1)])  # [24, 3, 16, 16]


def test_shapes_and_bad_input():
    torch.manual_seed(0)
    ae = FrameAutoencoder(latent_channels=4, hidden=8).eval()
    x = torch.rand(3, 3, 16, 24)
    z = ae.encode(x)
    assert z.shape == (3, 4, 4, 6) and ae.decode(z).shape == x.shape
    with pytest.raises(RefineError, match="multiples of 4"):
        ae.encode(torch.rand(1, 3, 18, 16))
    with pytest.raises(RefineError, match="latent_channels=0"):
        FrameAutoencoder(latent_channels=0)


def test_training_lowers_the_reconstruction_error_and_round_trips(tmp_path):
    torch.manual_seed(0)
    frames = _frames()
    ae = FrameAutoencoder(latent_channels=4, hidden=16)
    before = float(((reconstruct(ae, frames) - frames) ** 2).mean())
    losses = train_autoencoder(ae, frames, steps=60, batch_size=8, lr=2e-3, progress=False)
    after = float(((reconstruct(ae, frames) - frames) ** 2).mean())
    assert len(losses) == 60 and after < 0.5 * before
    ae.save_pretrained(tmp_path)
    again = FrameAutoencoder.from_pretrained(tmp_path)
    torch.testing.assert_close(reconstruct(again, frames), reconstruct(ae, frames))
    ms = codec_ms_per_frame(ae, 16, 16, reps=2)
    assert ms["encode"] > 0 and ms["decode"] > 0
    with pytest.raises(RefineError, match="steps=0"):
        train_autoencoder(ae, frames, steps=0)

"""save_pretrained / from_pretrained (safetensors only) and loading diffusers Wan checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from refine import RefineError
from refine.model import CausalWanRefiner
from refine.testing import tiny_model
from refine.wan import load_wan_checkpoint

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _inputs(t=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, t, 3, 16, 16, generator=g), torch.rand(1, t, 7, 16, 16, generator=g),
            torch.rand(1, t, generator=g) * 1000)


@pytest.fixture()
def saved(tmp_path):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def test_round_trip_is_exact(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS]
    loaded = CausalWanRefiner.from_pretrained(folder)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.spec == model.spec
    x, cond, ts = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, cond, ts), loaded(x, cond, ts))


def test_corrupt_weights_raise(saved):
    _, folder = saved
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(RefineError, match="corrupt"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RefineError, match="corrupt"):
        CausalWanRefiner.from_pretrained(folder)


def test_missing_files_raise(saved, tmp_path):
    _, folder = saved
    with pytest.raises(RefineError, match="not a directory"):
        CausalWanRefiner.from_pretrained(tmp_path / "nope")
    (folder / WEIGHTS).unlink()
    with pytest.raises(RefineError, match="missing"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(RefineError, match="missing"):
        CausalWanRefiner.from_pretrained(folder)


def test_config_weight_mismatch_raises(saved):
    _, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_layers": 3}))
    with pytest.raises(RefineError, match="missing"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "ffn_dim": 48}))
    with pytest.raises(RefineError, match="shape"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "window_frames": 0}))
    with pytest.raises(RefineError, match="invalid"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "mystery": 1}))
    with pytest.raises(RefineError, match="unknown keys"):
        CausalWanRefiner.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(RefineError, match="JSON"):
        CausalWanRefiner.from_pretrained(folder)


def _tiny_wan(tmp_path, in_channels=5):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    wan = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                in_channels=in_channels, out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32,
                                num_layers=2).eval()
    wan.save_pretrained(tmp_path / "wan")
    return wan, tmp_path / "wan"


def test_wan_checkpoint_loads_and_matches_diffusers(tmp_path):
    """A diffusers WanTransformer3DModel folder (2 extra in-channels, i2v style) loads; on one
    bidirectional block with an all-padding prompt the causal model reproduces Wan exactly."""
    wan, folder = _tiny_wan(tmp_path)
    model, report = load_wan_checkpoint(folder, frames_per_block=3, window_frames=3, sample_height=8,
                                        sample_width=8)
    assert report.zero_initialised == ("patch_embedding.weight[:, 5:10]",)
    assert all("text_embedder" in k for k in report.ignored)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 3, 3, 8, 8, generator=g), torch.rand(2, 3, 7, 8, 8, generator=g)
    ts = torch.rand(2, 3, generator=g) * 1000  # one timestep per frame
    with torch.no_grad():
        ours = model(x, cond, ts)
        hidden = torch.cat([x, cond[:, :, :2]], 2).permute(0, 2, 1, 3, 4)  # [B, C, T, H, W]
        per_token = ts[:, :, None].expand(2, 3, 16).reshape(2, -1)  # Wan 2.2 per-token timesteps
        ref = wan(hidden, per_token, torch.zeros(2, 7, 16)).sample.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_wan_checkpoint_options_and_errors(tmp_path):
    _, folder = _tiny_wan(tmp_path, in_channels=3)
    model, report = load_wan_checkpoint(folder, keep_cross_attention=False, cond_channels=4,
                                        frames_per_block=1, window_frames=2, sample_height=8, sample_width=8)
    assert model.null_context is None and any("attn2" in k for k in report.ignored)
    with torch.no_grad():
        cache = model.new_cache(1, 8, 8)
        out = model.forward_cached(torch.randn(1, 1, 3, 8, 8), torch.rand(1, 1, 4, 8, 8), torch.zeros(1, 1),
                                   cache, "append")
    assert out.shape == (1, 1, 3, 8, 8)
    with pytest.raises(RefineError, match="WanTransformer3DModel"):
        CausalWanRefiner.from_pretrained(folder)  # wrong loader: says which one to use
    with pytest.raises(RefineError, match="cond_channels"):
        _, many = _tiny_wan(tmp_path / "b", in_channels=12)
        load_wan_checkpoint(many, cond_channels=7)
    (folder / WEIGHTS).write_bytes(b"broken")
    with pytest.raises(RefineError, match="corrupt"):
        load_wan_checkpoint(folder)


def test_default_weights_missing_or_present_is_clear():
    import refine

    if (refine.DEFAULT_WEIGHTS_DIR / "config.json").is_file():
        model = refine.load_default_model()
        assert model.spec.out_channels == 3
    else:
        with pytest.raises(RefineError, match="no default weights"):
            refine.load_default_model()

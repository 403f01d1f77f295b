"""Training reduces the loss, checkpoints resume identically, bad checkpoints raise."""

from __future__ import annotations

import json

import pytest
import torch

from refine import RefineError, SamplerConfig, TrainConfig
from refine.model import CausalWanRefiner
from refine.testing import synthetic_clips, tiny_model
from refine.train import train


@pytest.fixture(scope="module")
def clips():
    return synthetic_clips(8, 4, seed=1)  # (cond [4, 7, 16, 16], target [4, 3, 16, 16])


def _cfg(**kw):
    base = dict(phase1_steps=8, phase2_steps=4, phase3_steps=2, batch_size=2, lr=2e-3, warmup_steps=2,
                checkpoint_every=5, progress=False, seed=11, sampler=SamplerConfig(num_steps=2))
    base.update(kw)
    return TrainConfig(**base)


def _losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "loss.jsonl").read_text().splitlines()]


def test_training_reduces_loss(clips, tmp_path):
    model = tiny_model(seed=0)
    result = train(model, clips, _cfg(phase1_steps=40, phase2_steps=0, phase3_steps=0, checkpoint_every=40),
                   tmp_path)
    losses = _losses(tmp_path)
    assert len(losses) == 40 and result.end_step == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first, (first, last)
    loaded = CausalWanRefiner.from_pretrained(result.model_dir)
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)


def test_resume_continues_identically(clips, tmp_path):
    """All three phases; stopped after step 7 (checkpoint at 5, so 6-7 are replayed)."""
    full = tiny_model(seed=0)
    train(full, clips, _cfg(), tmp_path / "full")
    part = tiny_model(seed=0)
    r1 = train(part, clips, _cfg(), tmp_path / "split", stop_after=7)
    assert r1.end_step == 7 and r1.model_dir is None
    # simulate a crash after the checkpoint at step 5: the fresh process starts from it
    (tmp_path / "split" / "checkpoints" / "latest").write_text("step-000005")
    resumed = tiny_model(seed=99)  # different init: everything must come from the checkpoint
    r2 = train(resumed, clips, _cfg(), tmp_path / "split")
    assert r2.start_step == 5 and r2.end_step == 14
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_non_finite_clip_is_named_as_such_not_blamed_on_the_learning_rate(clips, tmp_path):
    broken = [(c.clone(), t) for c, t in clips]
    for c, _ in broken[1:]:  # every clip but the first
        c[0, 0, 0, 0] = float("nan")
    with pytest.raises(RefineError, match=r"clip [1-7](, clip [1-7])? hold\(s\) NaN or inf"):
        train(tiny_model(seed=0), broken, _cfg(phase1_steps=2, phase2_steps=0, phase3_steps=0), tmp_path / "a")
    with pytest.raises(RefineError, match="lower TrainConfig.lr"):  # finite clips, a diverging step
        train(tiny_model(seed=0), clips, _cfg(phase1_steps=2, phase2_steps=0, phase3_steps=0, lr=1e30),
              tmp_path / "b")


def test_checkpoint_contents_and_corruption(clips, tmp_path):
    model = tiny_model(seed=0)
    train(model, clips, _cfg(phase1_steps=5, phase2_steps=0, phase3_steps=0), tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-000005"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["config.json", "diffusion_pytorch_model.safetensors", "state.json", "trainer.safetensors"]
    (ckpt / "trainer.safetensors").write_bytes(b"junk")
    with pytest.raises(RefineError, match="corrupt"):
        train(tiny_model(seed=0), clips, _cfg(phase1_steps=6, phase2_steps=0, phase3_steps=0), tmp_path)


def test_bad_clips_raise(tmp_path):
    with pytest.raises(RefineError, match="map-style"):
        train(tiny_model(), [], _cfg(), tmp_path)
    bad = [(torch.rand(4, 5, 16, 16), torch.rand(4, 3, 16, 16))]
    with pytest.raises(RefineError, match="cond"):
        train(tiny_model(), bad, _cfg(), tmp_path)
    odd = synthetic_clips(2, 3)
    with pytest.raises(RefineError, match="multiple"):
        train(tiny_model(), odd, _cfg(clip_frames=3), tmp_path)


def test_ssim_loss_equals_skimages_metric_and_is_zero_for_equal_frames():
    import numpy as np
    from skimage.metrics import structural_similarity

    from refine.train import ssim_loss

    rng = np.random.default_rng(0)
    a = rng.random((32, 40, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    want = structural_similarity(a, b, data_range=1.0, channel_axis=-1)

    def t(z):
        return torch.tensor(z).permute(2, 0, 1)[None, None]  # [1, 1, 3, H, W]

    assert 1 - float(ssim_loss(t(a), t(b))) == pytest.approx(want, abs=1e-6)
    assert float(ssim_loss(t(a), t(a))) == pytest.approx(0.0, abs=1e-6)


def test_ssim_term_applies_in_phases_2_and_3_only(clips, tmp_path):
    """Phase 1 is the same with or without the SSIM term (so a run can add it later and stay
    reproducible from one command); phases 2 and 3 change."""
    plain, with_ssim = tmp_path / "plain", tmp_path / "ssim"
    train(tiny_model(0, prediction="sample"), clips, _cfg(checkpoint_every=100), plain)
    train(tiny_model(0, prediction="sample"), clips, _cfg(checkpoint_every=100, ssim_weight=0.5), with_ssim)
    a, b = _losses(plain), _losses(with_ssim)
    assert a[:8] == b[:8]
    assert all(y > x for x, y in zip(a[8:9], b[8:9]))  # first phase-2 step: same weights, extra term
    assert a[8:] != b[8:]
    with pytest.raises(RefineError, match="ssim_weight"):
        _cfg(ssim_weight=-1.0)


def test_charbonnier_is_a_smooth_l1_that_keeps_pushing_faint_errors():
    from refine.config import CHARBONNIER_EPS
    from refine.train import pixel_loss

    target = torch.zeros(1, 2, 3, 4, 4)
    big = torch.full_like(target, 0.5)
    assert float(pixel_loss(big, target, "mse")) == pytest.approx(0.25)
    want = (0.25 + CHARBONNIER_EPS ** 2) ** 0.5 - CHARBONNIER_EPS  # pinned by hand
    assert float(pixel_loss(big, target, "charbonnier")) == pytest.approx(want, rel=1e-6)
    assert float(pixel_loss(target, target, "charbonnier")) == 0.0
    # a one-grey-level error (2/255 in residual units): MSE's gradient is 2d, ~0.016 per element
    # (summed over the mean's 1/n); the Charbonnier gradient stays ~1, the sign of d
    faint = torch.full_like(target, 2 / 255).requires_grad_()
    pixel_loss(faint, target, "mse").backward()
    g_mse = float(faint.grad.abs().sum())
    faint.grad = None
    pixel_loss(faint, target, "charbonnier").backward()
    g_l1 = float(faint.grad.abs().sum())
    assert g_l1 == pytest.approx(0.992, abs=1e-3) and g_mse == pytest.approx(4 / 255, rel=1e-5)
    with pytest.raises(RefineError, match="'l2'"):
        pixel_loss(big, target, "l2")


def test_loss_option_changes_training_from_the_first_step(clips, tmp_path):
    a, b = tmp_path / "mse", tmp_path / "charb"
    cfg = dict(phase1_steps=3, phase2_steps=1, phase3_steps=1, checkpoint_every=100)
    train(tiny_model(0, prediction="sample"), clips, _cfg(**cfg), a)
    train(tiny_model(0, prediction="sample"), clips, _cfg(**cfg, loss="charbonnier"), b)
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == 5 and all(x != y for x, y in zip(la, lb))
    assert all(0 < y < 10 for y in lb)
    with pytest.raises(RefineError, match="loss='huber'"):
        _cfg(loss="huber")


def test_temporal_loss_sees_flicker_not_offsets():
    from refine.train import _noise, temporal_loss

    target = torch.rand(2, 5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(temporal_loss(target + 0.3, target)) == pytest.approx(0.0, abs=1e-7)  # steady bias: no cost
    e = 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])[None, :, None, None, None]
    assert float(temporal_loss(target + e, target)) == pytest.approx(4 * 0.1 ** 2, rel=1e-5)  # (2e)^2
    g = torch.Generator().manual_seed(1)
    n = _noise((2, 4, 3, 8, 8), g, static=True)
    assert torch.equal(n[:, 0], n[:, 3]) and not torch.equal(n[0], n[1])
    assert not torch.equal(*_noise((1, 2, 3, 8, 8), g, static=False)[0])


def test_temporal_term_and_static_noise_change_training_as_documented(clips, tmp_path):
    """The temporal term leaves phase 1 alone and adds to phase 2; static noise changes every phase."""
    runs = {"plain": {}, "temporal": {"temporal_weight": 2.0},
            "static": {"sampler": SamplerConfig(num_steps=2, noise="static")}}
    losses = {}
    for name, kw in runs.items():
        train(tiny_model(0, prediction="sample"), clips, _cfg(checkpoint_every=100, **kw), tmp_path / name)
        losses[name] = _losses(tmp_path / name)
    a, b, c = losses["plain"], losses["temporal"], losses["static"]
    assert a[:8] == b[:8] and b[8] > a[8] and a[8:] != b[8:]
    assert a[0] != c[0] and all(map(lambda x: x == x, c))  # finite, different noise from step 0
    with pytest.raises(RefineError, match="temporal_weight"):
        _cfg(temporal_weight=-1.0)


def test_gradient_loss_sees_soft_edges_not_offsets():
    from refine.train import gradient_loss

    x = torch.arange(16.0)
    step = (x >= 8).float().expand(2, 3, 16, 16)  # [B, C, H, W]: a vertical edge of contrast 1
    assert float(gradient_loss(step + 0.3, step)) == pytest.approx(0.0, abs=1e-7)  # a flat offset: no cost
    # the edge softened to a two-pixel ramp: |0.5 - 1| + |0.5 - 0| in one row of 15 differences, no dy
    soft = step.clone()
    soft[..., 8] = 0.5
    assert float(gradient_loss(soft, step)) == pytest.approx(0.5 * (1.0 / 15), rel=1e-6)
    # moved by one pixel: two differences of 1 per row (and the same for a horizontal edge)
    moved = (x >= 9).float().expand(2, 3, 16, 16)
    assert float(gradient_loss(moved, step)) == pytest.approx(0.5 * (2.0 / 15), rel=1e-6)
    assert float(gradient_loss(moved.transpose(-1, -2), step.transpose(-1, -2))) == \
        pytest.approx(0.5 * (2.0 / 15), rel=1e-6)


def test_grad_term_leaves_phase_1_alone_and_adds_to_phase_2(clips, tmp_path):
    runs = {"plain": {}, "grad": {"grad_weight": 2.0}}
    losses = {}
    for name, kw in runs.items():
        train(tiny_model(0, prediction="sample"), clips, _cfg(checkpoint_every=100, **kw), tmp_path / name)
        losses[name] = _losses(tmp_path / name)
    a, b = losses["plain"], losses["grad"]
    assert a[:8] == b[:8] and b[8] > a[8] and a[8:] != b[8:]
    with pytest.raises(RefineError, match="grad_weight"):
        _cfg(grad_weight=-1.0)


def test_zero_noise_trains_teacher_forcing_with_noise_and_rolls_out_without(clips, tmp_path):
    """noise="zero" is a sampling mode: phases 1-2 (teacher forcing) are the fresh-noise run's,
    step for step; only the self-rollout phase (3) changes, since it runs the sampler's steps."""
    losses = {}
    for mode in ("fresh", "zero"):
        train(tiny_model(0, prediction="sample"), clips,
              _cfg(checkpoint_every=100, sampler=SamplerConfig(num_steps=2, noise=mode)), tmp_path / mode)
        losses[mode] = _losses(tmp_path / mode)
    fresh, zero = losses["fresh"], losses["zero"]
    assert len(fresh) == len(zero) == 14
    assert fresh[:12] == zero[:12] and fresh[12:] != zero[12:]
    assert all(x == x for x in zero)


def test_train_only_updates_the_named_parameters_and_nothing_else(clips, tmp_path):
    model = tiny_model(0, prediction="sample", head_channels=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, clips, _cfg(phase1_steps=3, phase2_steps=2, phase3_steps=1, train_only=("pixel_head",),
                             checkpoint_every=100), tmp_path / "head")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith("pixel_head") for n in changed)
    assert "pixel_head.2.weight" in changed  # the zero-initialised last conv learns
    assert all(p.requires_grad for p in model.parameters())  # handed back unfrozen
    bad = tiny_model(0)
    with pytest.raises(RefineError, match="names no parameter.*proj_out"):
        train(bad, clips, _cfg(train_only=("decoder",)), tmp_path / "bad")
    assert all(p.requires_grad for p in bad.parameters())  # a failed run hands it back unfrozen too
    with pytest.raises(RefineError, match="empty prefix"):
        _cfg(train_only=("",))


@pytest.mark.parametrize("residual", [True, False])
def test_direct_loss_trains_exactly_what_the_refiner_runs_without_a_clean_pass(residual):
    """clean_pass=False, one step, noise="zero": the refiner's streamed output (KV cache, window
    eviction and all) equals the dense forward direct_loss trains, so training sees inference."""
    from refine import Refiner
    from refine.model import SAMPLE_MIN_SIGMA
    from refine.train import direct_loss, direct_training

    model = tiny_model(seed=3, residual_space=residual, prediction="sample")
    cond = torch.stack([c for c, _ in synthetic_clips(2, 10, seed=1)])  # 5 blocks: evictions happen
    sampler = SamplerConfig(sigmas=(0.1,), noise="zero", clean_pass=False)
    assert direct_training(sampler) and not direct_training(SamplerConfig(sigmas=(0.1,), noise="zero"))
    streamed = Refiner(model, sampler).refine_video(cond, seed=0)
    with torch.no_grad():
        x = 0.9 * model.coarse_x0(cond)
        x0 = x - max(0.1, SAMPLE_MIN_SIGMA) * model(x, cond, torch.full((2, 10), 100.0))
    assert torch.allclose(model.from_diffusion(x0, cond), streamed, atol=1e-5)
    with_clean = Refiner(model, SamplerConfig(sigmas=(0.1,), noise="zero")).refine_video(cond, seed=0)
    assert not torch.allclose(with_clean[:, 2:], streamed[:, 2:], atol=1e-4)  # the context differs
    own = model.from_diffusion(x0, cond, clamp=False)  # the loss of the model's own output is ~0
    assert float(direct_loss(model, cond, own, 0.1).detach()) < 1e-9


def test_clean_pass_false_is_saved_and_read_back(tmp_path):
    import dataclasses

    from hybridsim.config import RefineSettings
    from hybridsim.refining import sampler_config

    (tmp_path / "sampler.json").write_text(json.dumps(dataclasses.asdict(
        SamplerConfig(sigmas=(0.1,), noise="zero", clean_pass=False)), default=list))
    assert sampler_config(RefineSettings(), tmp_path).clean_pass is False
    # a schedule given on the command line keeps how the model reads its context
    assert sampler_config(RefineSettings(sigmas=[0.2, 0.1]), tmp_path).clean_pass is False
    with pytest.raises(RefineError, match="clean_pass"):
        SamplerConfig(clean_pass="no")


def test_grad_weight_reaches_the_direct_and_rollout_losses():
    """The edge term is added exactly (direct loss: the shipped recipe's phase 2) and linearly in its
    weight (self-rollout, phase 3)."""
    from refine.model import SAMPLE_MIN_SIGMA
    from refine.train import direct_loss, gradient_loss, rollout_loss

    model = tiny_model(seed=3, prediction="sample")
    pairs = synthetic_clips(2, 4, seed=1)
    cond, target = torch.stack([c for c, _ in pairs]), torch.stack([t for _, t in pairs])
    with torch.no_grad():
        x = 0.9 * model.coarse_x0(cond)
        x0 = x - max(0.1, SAMPLE_MIN_SIGMA) * model(x, cond, torch.full((2, 4), 100.0))
        edge = float(gradient_loss(model.from_diffusion(x0, cond, clamp=False), target))
        plain = float(direct_loss(model, cond, target, 0.1))
        both = float(direct_loss(model, cond, target, 0.1, grad_weight=2.0))
    assert edge > 0 and both - plain == pytest.approx(2.0 * edge, rel=1e-4)

    def rollout(w: float) -> float:
        return float(rollout_loss(model, cond, target, [0.2, 0.1], torch.Generator().manual_seed(0), grad_weight=w))

    r0, r1, r2 = rollout(0.0), rollout(1.0), rollout(2.0)
    assert r1 > r0 and r2 - r0 == pytest.approx(2 * (r1 - r0), rel=1e-4)

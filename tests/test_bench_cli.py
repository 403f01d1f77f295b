"""`hybridsim bench`: options are checked, and the pipeline section measures the real frame loop."""

import json

import pytest

from hybridsim.cli import main


def test_bench_rejects_unknown_options_and_sections(capsys):
    assert main(["bench", "speed=fast"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["bench", "sections=render,warp"]) == 2
    assert "unknown ['warp']" in capsys.readouterr().err
    assert main(["bench", "frames=1"]) == 2


@pytest.mark.parametrize("command", ["bench", "train-refiner", "eval-refiner"])
def test_help_lists_every_option_with_its_default(command, capsys):
    import importlib

    from hybridsim.cli import OPTION_MODULES

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    defaults = importlib.import_module(OPTION_MODULES[command]).DEFAULTS
    for key, value in defaults.items():
        assert f"  {key} " in out, key
    assert f"= {defaults['out']!r}" in out and f"= {defaults['frames']}" in out


def test_bench_pipeline_section_reports_stages_and_latency(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "sections=pipeline", "frames=6", "threads=1", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    p = report["pipeline"]
    assert [r["mode"] for r in p["runs"]] == ["serial", "overlap"]
    for r in p["runs"]:
        assert r["frames"] == 6 and r["frames_per_s"] > 0
        assert set(r["ms_per_frame"]) == {"physics", "splat_render", "refine"}
        assert all(v > 0 for v in r["ms_per_frame"].values())
        # a frame's refined image exists only after its block's last frame was simulated and refined
        assert r["latency_ms_median"] >= r["ms_per_frame"]["refine"]
    assert p["overlap_speedup"] == pytest.approx(p["runs"][1]["frames_per_s"] / p["runs"][0]["frames_per_s"])
    md = (out / "report.md").read_text()
    assert "## pipeline" in md and "overlap / serial" in md


def test_bench_refine_device_options_are_checked_before_work(capsys):
    assert main(["bench", "sections=refine", "dtype=bfloat16"]) == 2
    assert "bench device/dtype" in capsys.readouterr().err
    assert main(["bench", "sections=refine", "batch=0"]) == 2


def test_bench_latent_section_needs_clips(capsys, tmp_path):
    assert main(["bench", "sections=latent", f"clips={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "bench clips" in err and "train-refiner" in err


def _fake_scene(path, seed: int, clips: int = 1, frames: int = 2, res: int = 128) -> None:
    """A scene file in the clip layout (cond float16 [N, T, C, H, W], target uint8 [N, T, H, W, 3]), C =
    the shipped refiner's condition channels (the latent bench compares against it)."""
    import json

    import numpy as np
    from refine import load_default_model

    rng = np.random.default_rng(seed)
    c = load_default_model().spec.cond_channels
    cond = rng.random((clips, frames, c, res, res), dtype=np.float32).astype(np.float16)
    target = (cond[:, :, :3].transpose(0, 1, 3, 4, 2) * 200 + 20).astype(np.uint8)
    np.savez(path, cond=cond, target=target, scenario=json.dumps({}))


def test_bench_latent_section_on_tiny_clips(tmp_path):
    from hybridsim.training.latent_bench import LatentBench, bench_latent, latent_markdown

    for i in range(2):
        _fake_scene(tmp_path / f"scene_{i:04d}.npz", seed=i)
    b = bench_latent(str(tmp_path), ae_steps=3, progress=False)
    assert b.train_scenes == 1 and b.held_out_scenes == 1 and b.held_out_frames > 0
    assert 0 < b.ae_psnr < 100 and 0 < b.pixel_psnr < 100 and -1 <= b.ae_ssim <= 1
    assert b.encode_ms_per_frame > 0 and b.decode_ms_per_frame > 0 and b.refine_ms_per_frame > 0
    assert "ceiling of a latent refiner" in "\n".join(latent_markdown(LatentBench(**vars(b))))


def test_compare_spaces_trains_both_spaces_on_tiny_clips(tmp_path):
    from hybridsim.training.latent_bench import compare_spaces, spaces_markdown

    for i in range(2):
        _fake_scene(tmp_path / f"scene_{i:04d}.npz", seed=i, frames=6, res=32)
    runs = compare_spaces(str(tmp_path), steps=2, ae_steps=2, progress=False)
    assert [r.space for r in runs] == ["pixel", "latent"]
    assert all(0 < r.psnr < 100 and r.train_cpu_s > 0 and r.ms_per_frame > 0 for r in runs)
    assert "latent" in "\n".join(spaces_markdown(runs))

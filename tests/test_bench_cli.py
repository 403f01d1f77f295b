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


def test_bench_pipeline_section_reports_stages_and_latency(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "sections=pipeline", "frames=6", "threads=1", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    p = report["pipeline"]
    assert p["frames"] == 6 and p["frames_per_s"] > 0
    assert set(p["ms_per_frame"]) == {"physics", "splat_render", "refine"}
    assert all(v > 0 for v in p["ms_per_frame"].values())
    # a frame's refined image exists only after its block's last frame was simulated and refined
    assert p["latency_ms_median"] >= p["ms_per_frame"]["refine"]
    assert "## pipeline" in (out / "report.md").read_text()


def test_bench_refine_device_options_are_checked_before_work(capsys):
    assert main(["bench", "sections=refine", "dtype=bfloat16"]) == 2
    assert "bench device/dtype" in capsys.readouterr().err
    assert main(["bench", "sections=refine", "batch=0"]) == 2

"""Every benchmark runs in its --quick form, so the scripts cannot rot (figures not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(name: str, tmp_path, timeout: int = 300) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "BENCH_TMP": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", f"{name}.py"),
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert "headline" in proc.stdout  # the table is printed last
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, keys",
    [
        (
            "sync",
            (
                "bytes_reduction_vs_fp32_full",
                "push_pull_p50_ms_1m",
                "throughput_ratio_vs_raw_write",
                "push_peak_extra_memory_ratio_10m",
            ),
        ),
        (
            "placement",
            (
                "hp_p95_speedup_vs_dask",
                "makespan_speedup_vs_dask",
                "makespan_speedup_vs_naive",
                "overhead_ratio_vs_dask",
            ),
        ),
    ],
)
def test_positive_headlines_quick(name, keys, tmp_path):
    h = run_quick(name, tmp_path)["headline"]
    for key in keys:
        assert isinstance(h[key], (int, float)) and h[key] > 0


@pytest.mark.slow
def test_hybrid_quick(tmp_path):
    h = run_quick("hybrid", tmp_path)["headline"]
    for key in (
        "time_to_target_speedup_hybrid",
        "time_to_target_speedup_compressed",
        "bytes_reduction_compressed_vs_hybrid",
        "final_loss_rel_diff_compressed",
    ):
        assert isinstance(h[key], (int, float))


@pytest.mark.slow
def test_placement_scale_quick(tmp_path):
    h = run_quick("placement_scale", tmp_path)["headline"]
    assert 0 < h["ms_per_decision_1024"] < 50
    assert isinstance(h["cost_growth_exponent"], float)


@pytest.mark.slow
def test_recovery_quick(tmp_path):
    result = run_quick("recovery", tmp_path, timeout=600)
    h = result["headline"]
    for key in (
        "mttr_s_median_standby",
        "mttr_s_median_no_standby",
        "ckpt_blocking_fraction",
        "goodput",
    ):
        assert isinstance(h[key], (int, float))
    assert h["unreadable_versions"] == 0  # every version committed under kills reads back

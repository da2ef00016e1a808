"""Every benchmark runs in its --quick form, so the scripts cannot rot (figures not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(name: str, tmp_path, timeout: int = 300, extra: tuple = (), tag: str = "") -> dict:
    out = tmp_path / f"{name}{tag}.json"
    env = {**os.environ, "BENCH_TMP": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", f"{name}.py"),
            "--quick",
            *extra,
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
    assert (tmp_path / f"{name}{tag}.png").stat().st_size > 5_000
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
                "bytes_reduction_vs_fp32_full_real",
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
                "scheduler_cpu_ratio_vs_dask",
            ),
        ),
    ],
)
def test_positive_headlines_quick(name, keys, tmp_path):
    h = run_quick(name, tmp_path)["headline"]
    for key in keys:
        assert isinstance(h[key], (int, float)) and h[key] > 0
    # the directions that hold on any run, quick or full
    if name == "sync":  # compressed deltas take fewer bytes than fp32 snapshots, real or not
        assert h["bytes_reduction_vs_fp32_full_real"] > 1 and h["bytes_reduction_vs_fp32_full"] > 1
    if name == "placement":  # high-priority tasks wait less behind queued work than in Dask
        assert h["ours_high_p95_s"] < h["dask_high_p95_s"]


@pytest.mark.slow
def test_hybrid_quick(tmp_path):
    h = run_quick("hybrid", tmp_path)["headline"]
    for key in (
        "time_to_target_speedup_hybrid",
        "time_to_target_speedup_compressed",
        "bytes_reduction_compressed_vs_hybrid",
        "final_loss_rel_diff_compressed",
        "time_to_target_speedup_hybrid_median",
        "loss_rel_diff_vs_ideal_sync",
    ):
        assert isinstance(h[key], (int, float))
    # compressed deltas move fewer bytes than fp32 ones, and far fewer than every-step sync
    assert h["bytes_reduction_compressed_vs_hybrid"] > 1
    assert h["bytes_reduction_vs_sync_dp"] > h["bytes_reduction_compressed_vs_hybrid"]
    # --reuse takes the cluster runs from that result and runs only the ideal baseline again:
    # training is deterministic, so every loss and byte figure is the same
    again = run_quick("hybrid", tmp_path, extra=("--reuse", str(tmp_path / "hybrid.json")), tag="2")
    assert again["params"]["reused_from"]["path"] == str(tmp_path / "hybrid.json")
    for key in ("bytes_reduction_compressed_vs_hybrid", "final_loss_rel_diff_compressed"):
        assert again["headline"][key] == h[key]


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
    # the directions that hold on any run: a standby brings the fleet back sooner than none,
    # it takes over within the round it was killed in, and kills cost throughput
    assert h["mttr_full_strength_s_median_standby"] < h["mttr_full_strength_s_median_no_standby"]
    assert 0 < h["takeover_s_median"] < h["mttr_full_strength_s_median_standby"]
    assert 0 < h["goodput_throughput"] < 1.2
    # against the run's own round rate no drift between runs enters: kills only cost
    assert 0 < h["goodput_throughput_within_run"] < 1.05
    # a lost node (nothing restarts it): the standby still takes over and the round completes
    assert 0 < h["mttr_full_strength_s_median_standby_node_lost"] < 60


def test_hybrid_loss_criterion_is_the_upper_end_of_the_mean_changes_interval():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from hybrid import ci95_high, loss_criterion

    # two seeds at +0% and +2%: mean 1%, sd 1.414%, t(0.975, 1) = 12.706
    assert loss_criterion([0.0, 0.02]) == pytest.approx(0.01 + 12.706 * 0.01414 / 2**0.5, rel=1e-3)
    # four seeds (int4's changes in the session-5 run): a tighter interval
    assert loss_criterion([0.00396, 0.01032, 0.00508, 0.00558]) == pytest.approx(0.0107, abs=1e-4)
    # no spread: the mean itself; a consistent gain: below zero
    assert loss_criterion([0.005] * 4) == pytest.approx(0.005)
    assert loss_criterion([-0.002, -0.003, -0.002, -0.001]) < 0
    # one seed (--quick): no interval, that seed's absolute change
    assert loss_criterion([-0.003]) == 0.003
    assert ci95_high([0.01]) != ci95_high([0.01])  # nan: no interval from one value


@pytest.mark.slow
def test_registry_quick(tmp_path):
    h = run_quick("registry", tmp_path)["headline"]
    for key in ("ref_update_ms_100", "log_ms_per_commit_100", "commit_ms_100", "checkout_ms_100"):
        assert isinstance(h[key], float) and h[key] > 0
    # the directions that hold on any run: a head found through its hint costs less than one
    # found by listing the ref's log, and GC frees (nearly) all that nothing references
    assert h["head_ms_100"] < h["head_by_listing_ms_100"]
    assert h["gc_bytes_freed_fraction"] >= 0.9


@pytest.mark.slow
def test_serving_quick(tmp_path):
    h = run_quick("serving", tmp_path, timeout=900)["headline"]
    for key in ("p99_ms_50_clients", "p99_ms_50_clients_ab", "throughput_ratio_vs_unbatched"):
        assert isinstance(h[key], float) and h[key] > 0
    # what holds on any run: every request is answered or fails with a clear error, and the
    # made-worse candidate is rolled back by the canary
    assert h["clear_fraction"] == 1.0
    assert h["rollback_s"] is not None and h["rollback_s"] > 0


@pytest.mark.slow
def test_dashboard_quick(tmp_path):
    h = run_quick("dashboard", tmp_path)["headline"]
    assert isinstance(h["update_ms_2000"], float) and h["update_ms_2000"] > 0
    # what holds on any run: showing a bounded set of rows costs less at 2,000 workers than
    # listing every worker, and grows less with the fleet
    assert h["update_ms_2000"] < h["all_rows_update_ms_2000"]
    assert h["update_growth_2000_vs_20"] < h["all_rows_growth_2000_vs_20"]


@pytest.mark.slow
def test_elastic_quick(tmp_path):
    h = run_quick("elastic", tmp_path, timeout=600)["headline"]
    # what holds on any run: no task or round is lost while the cluster grows and shrinks,
    # and our target asks for workers within the operator's 5 s poll of a burst
    assert h["tasks_lost"] == 0
    assert 0 <= h["decision_s"] <= 5.0
    assert h["scale_up_s"] > 0


@pytest.mark.slow
def test_scaling_sim_quick(tmp_path):
    h = run_quick("scaling_sim", tmp_path)["headline"]
    # what holds on any run: a decision reads counters, not workers, so it barely grows with a
    # 128x fleet; the per-worker hooks grow about as the fleet does, not faster (a margin for
    # the noise of sub-millisecond timings at 8 workers)
    assert h["decision_growth_1024_vs_8"] < 10
    assert h["refresh_growth_1024_vs_8"] < 1.5 * h["fleet_growth_1024_vs_8"]
    assert h["downscale_growth_1024_vs_8"] < 1.5 * h["fleet_growth_1024_vs_8"]


@pytest.mark.slow
def test_cold_start_quick(tmp_path):
    h = run_quick("cold_start", tmp_path, timeout=600)["headline"]
    # what holds on any run: a worker with the filled cache and the prewarm reaches its first
    # agent task sooner, its compilation hits the cache, and its first steps are compiled
    assert h["warm_start_s"] < h["cold_start_s"]
    assert h["warm_cache_hits"] is True
    assert h["first_steps_s_warm"] < h["first_steps_s_cold"]


@pytest.mark.slow
def test_continual_quick(tmp_path):
    h = run_quick("continual", tmp_path, timeout=600)["headline"]
    # what holds on any run (class-incremental Split-Digits): fine-tuning forgets, replay
    # forgets less, and joint training bounds them both from above
    assert h["forgetting_reduction_replay_vs_naive"] > 1
    assert h["joint_acc_class"] > h["replay_acc_class"] > h["naive_acc_class"]
    assert h["acc_gap_replay_vs_joint"] > 0


@pytest.mark.slow
def test_transfer_quick(tmp_path):
    h = run_quick("transfer", tmp_path, timeout=600)["headline"]
    # what holds on any run: the pre-trained model starts ahead on the new corpus and reaches
    # scratch's final loss no later than scratch does
    assert h["first_eval_loss_transfer"] < h["first_eval_loss_scratch"]
    assert h["transfer_speedup"] >= 1
    assert h["stdlib_forgetting_with_replay"] is not None

"""The console scripts, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


def _run(*args, timeout=300, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.slow
def test_demo_trains_and_beats_the_unigram_baseline(tmp_path):
    out = tmp_path / "demo"
    env = {
        **os.environ,
        "DASK_CLUSTER_APP__CLUSTER__DASHBOARD_ADDRESS": ":0",
        # a smaller model and corpus so the test stays short; the real demo uses defaults
        "DASK_CLUSTER_APP__AGENT__CODELM__D_MODEL": "32",
        "DASK_CLUSTER_APP__DATA__CODE__MAX_TRAIN_CHARS": "300000",
    }
    proc = _run(
        os.path.join(BIN, "cluster-app"),
        "demo",
        "--workers",
        "2",
        "--seconds",
        "12",
        "--local-steps",
        "20",
        "--out",
        str(out),
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_loss_end"] < summary["baseline_loss"]
    assert summary["peak_memory_gib"] < 6
    assert summary["rounds"] >= 1 and len(summary["completions"]) == 5
    # the model is committed to prod with its eval report and served over HTTP
    assert summary["served_at"].startswith("http://") and len(summary["commit"]) == 64
    assert 0 <= summary["exact_match"] <= 1 and 0 < summary["ngram_exact_match"] < 1
    assert all(len(text) == 32 for text in summary["completions"].values())
    assert (out / "loss.png").stat().st_size > 10_000
    for text in (
        "held-out loss start -> end",
        "unigram baseline",
        "peak memory",
        "dashboard at",
        "-gram of the same text",
        "/v1/completions",
    ):
        assert text in proc.stdout


def test_config_command_prints_validated_config():
    proc = _run(os.path.join(BIN, "cluster-app"), "config")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train.local-steps"] == 100


def test_config_command_reports_bad_env_value():
    env = {**os.environ, "DASK_CLUSTER_APP__TRAIN__ROUNDS": "-3"}
    proc = _run(os.path.join(BIN, "cluster-app"), "config", env=env)
    assert proc.returncode != 0
    assert "cluster-app.train.rounds = -3 is out of range" in proc.stderr


def test_demo_rejects_bad_arguments():
    proc = _run(os.path.join(BIN, "cluster-app"), "demo", "--workers", "0")
    assert proc.returncode == 2
    assert "--workers" in proc.stderr


@pytest.mark.skipif(shutil.which("dask", path=BIN) is None, reason="dask CLI not installed")
def test_dask_cli_exposes_the_subcommand():
    proc = _run(os.path.join(BIN, "dask"), "cluster-app", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout


def test_ctrl_c_while_a_command_connects_closes_its_client(monkeypatch):
    """A Ctrl-C that lands while the client starts is held until the start returns; the
    client is then closed and the command ends (a client interrupted midway stays half-open
    and its close at exit waits out a 20 s timeout: ``cluster-app status`` hung on it)."""
    import signal

    import distributed

    from cluster_app.cli._common import connect

    made = []

    class PressedDuringStart(distributed.Client):
        def __init__(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(distributed, "Client", PressedDuringStart)
    # Ctrl-C as in a terminal (a test run started in the background inherits it ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cluster = distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0")
        with cluster, pytest.raises(KeyboardInterrupt):
            connect(cluster.scheduler_address)
        assert len(made) == 1 and made[0].status == "closed"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, before)

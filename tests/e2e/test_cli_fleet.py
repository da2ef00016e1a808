"""``cluster-app up | train | status`` and ``runs`` against a real cluster, as a user would run
them; argument handling and exit codes with click's runner.

The slow tests share one ``cluster-app up`` (a subprocess, two workers) and run in file order:
the last one stops it with SIGINT.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import distributed  # noqa: F401  (its config defaults exist before a test's dask.config.set)
import pytest
from click.testing import CliRunner

from cluster_app.agent.spec import AgentSpec
from cluster_app.cli import main
from cluster_app.runs.record import RunRecord
from cluster_app.runs.spec import RunSpec, spec_to_dict

BIN = os.path.dirname(sys.executable)
CLI = os.path.join(BIN, "cluster-app")
ENV = {
    **os.environ,
    "DASK_CLUSTER_APP__CLUSTER__DASHBOARD_ADDRESS": ":0",
    "DASK_CLUSTER_APP__RECOVERY__STANDBY": "0",
}


UP_ARGS = ["--workers", "2", "--scheduler-port", "0", "--dashboard-address", ":0", "--model", "mlp"]
UP_ARGS += ["--keeper"]


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run(*args, timeout=120):
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- arguments (fast)
@pytest.mark.parametrize(
    "command",
    [
        ["up"],
        ["train"],
        ["runs"],
        ["runs", "list"],
        ["runs", "show"],
        ["runs", "attach"],
        ["runs", "pause"],
        ["runs", "resume"],
        ["runs", "stop"],
        ["checkpoints"],
        ["checkpoints", "list"],
        ["checkpoints", "verify"],
        ["status"],
        ["bench"],
    ],
)
def test_every_command_has_help(command):
    r = cli(*command, "--help")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: main {' '.join(command)}") or "Usage:" in r.output
    body = r.output.split("Options:")[0]
    assert len(body.split()) > 8  # a docstring, not just the usage line


@pytest.mark.skipif(shutil.which("dask", path=BIN) is None, reason="dask CLI not installed")
def test_dask_cli_has_the_new_commands():
    proc = subprocess.run(
        [os.path.join(BIN, "dask"), "cluster-app", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("Commands:")[1].split()
    for name in ("up", "train", "runs", "checkpoints", "status", "bench"):
        assert name in commands


@pytest.mark.parametrize(
    "args, message",
    [
        (["up", "--workers", "0"], "--workers"),
        (["up", "--scheduler-port", "70000"], "--scheduler-port"),
        (["up", "--model", "gpt"], "--model"),
        (["train", "--detach"], "--detach needs --scheduler"),
        (["train", "--scheduler", "tcp://x:1", "--workers", "2"], "--workers sizes a local"),
        (["train", "--rounds", "0"], "--rounds"),
        (["train", "--learning-rate", "100"], "--learning-rate"),
        (["train", "--codec", "int9"], "--codec"),
        (["train", "--run-id", "a/b"], "--run-id"),
        (["status"], "--scheduler"),
        (["status", "--scheduler", "tcp://x:1", "--interval", "0"], "--interval"),
        (["runs", "show", "r", "-n", "-1"], "-n"),
        (["checkpoints", "verify", "r", "--step", "-2"], "--step"),
    ],
)
def test_bad_arguments_exit_2(args, message):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_train_refuses_a_run_id_that_exists(tmp_path):
    store = str(tmp_path / "store")
    spec = RunSpec.from_config(
        agent=AgentSpec.from_config(model="mlp"), store_url=store, run_id="x"
    )
    RunRecord(spec.run_url).create(spec_to_dict(spec))
    r = cli("train", "--run-id", "x", "--store", store, "--model", "mlp")
    assert r.exit_code == 4 and "conflict: a run 'x' exists" in r.output


def test_a_bad_continual_file_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("mode: forever\ntasks: [{name: a}]\n", "continual.mode = 'forever'"),
        ("- just a list\n", "a mapping of ContinualSpec fields"),
        ("tasks: [{data: {classes: [0]}}]\n", "not a continual spec"),
        ("tasks: [{name: a}]\nreplay_size: -1\n", "continual.replay-size"),
    ]:
        bad.write_text(text)
        r = cli("train", "--model", "mlp", "--store", str(tmp_path / "s"), "--continual", str(bad))
        assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.slow
def test_train_runs_a_continual_spec_file(tmp_path):
    spec = tmp_path / "tasks.yaml"
    spec.write_text(
        "mode: lifelong\nrounds_per_task: 2\nreplay_size: 40\ntasks:\n"
        "  - {name: low, data: {classes: [0, 1]}}\n  - {name: high, data: {classes: [8, 9]}}\n"
    )
    store = str(tmp_path / "store")
    r = cli(
        "train",
        "--model",
        "mlp",
        "--workers",
        "2",
        "--local-steps",
        "10",
        "--store",
        store,
        "--run-id",
        "cl",
        "--continual",
        str(spec),
    )
    assert r.exit_code == 0, r.output
    history = RunRecord(os.path.join(store, "cl")).history()
    assert [h["task"] for h in history] == [0, 0, 1, 1]  # the file's tasks set the rounds
    assert [t["name"] for t in history[-1]["task_eval"]] == ["low", "high"]
    assert os.path.exists(os.path.join(store, "cl", "continual", "consolidated-1.json"))


def test_an_unreachable_scheduler_is_an_error(tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    store = str(tmp_path / "store")
    spec = RunSpec.from_config(
        agent=AgentSpec.from_config(model="mlp"), store_url=store, run_id="s"
    )
    record = RunRecord(spec.run_url)
    record.create(spec_to_dict(spec))
    record.set_status(phase="stopped")
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        for args in (
            ["status", "--scheduler", address, "--once"],
            ["runs", "resume", "s", "--scheduler", address, "--store", store],
            ["train", "--scheduler", address, "--detach", "--model", "mlp", "--store", store],
        ):
            r = cli(*args)
            assert r.exit_code == 1, (args, r.output)
            assert f"cannot reach a scheduler at {address}" in r.output


# ---------------------------------------------------------------------- a real cluster
@dataclass
class Fleet:
    proc: subprocess.Popen
    address: str
    store: str
    lines: list[str]
    stdout: queue.Queue
    stderr: str


def _wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _pump(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """``cluster-app up`` with two mlp workers, until the module's last test stops it."""
    tmp = tmp_path_factory.mktemp("fleet")
    store = str(tmp / "store")
    with open(tmp / "up.err", "w") as err:
        proc = subprocess.Popen(
            [CLI, "up", *UP_ARGS, "--store", store],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while not any(" agents), store " in line for line in lines):
        try:
            lines.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"up did not start: {lines} {(tmp / 'up.err').read_text()[-3000:]}")
    address = next(line.split()[1] for line in lines if line.startswith("scheduler:"))
    yield Fleet(proc, address, store, lines, out, str(tmp / "up.err"))
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


@pytest.mark.slow
def test_up_serves_a_cluster_with_our_plugins(fleet):
    from distributed import Client

    from cluster_app.cli.up import scheduler_preloads

    assert fleet.address.startswith("tcp://127.0.0.1:")
    assert any(line.startswith("dashboard: http://127.0.0.1:") for line in fleet.lines)
    observe = scheduler_preloads() == ["cluster_app.observe.preload"]  # once it is installed
    assert observe == any(line.startswith("fleet:") for line in fleet.lines)
    with Client(fleet.address, timeout=10) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        scheduler_plugins = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.plugins)
        )
        assert {"cluster-app-placement", "cluster-app-keeper"} <= set(scheduler_plugins)
        worker_plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        for names in worker_plugins.values():
            assert {"cluster-app-agent", "cluster-app-rtt"} <= set(names)


@pytest.mark.slow
def test_status_refreshes_until_ctrl_c(fleet):
    args = ["status", "--scheduler", fleet.address, "--store", fleet.store, "--interval", "0.3"]
    proc = subprocess.Popen(
        [CLI, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        # Ctrl-C as in a terminal: a test run started in the background (`make test &`)
        # passes SIGINT on ignored, and a process that inherits it ignored never sees it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(4)  # a few refreshes (a terminal redraws them; a pipe gets the last one)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"cluster-app agents on {fleet.address}" in out and out.count("tcp://127.0.0.1:") >= 3


@pytest.mark.slow
def test_train_follows_a_run_and_its_checkpoints_verify(fleet):
    from cluster_app.testing.chaos import corrupt_latest_checkpoint

    where = ["--scheduler", fleet.address, "--store", fleet.store, "--model", "mlp"]
    args = ["--rounds", "6", "--local-steps", "10", "--checkpoint-every", "2", "--standby", "0"]
    proc = run("train", *where, "--run-id", "short", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run short on {fleet.address} (store {fleet.store})", proc.stdout
    rounds = [line.split()[1] for line in lines if line.startswith("round")]
    assert rounds == [str(r) for r in range(6)], proc.stdout
    assert lines[-1].startswith("run short finished: 6 rounds, version 6, held-out loss "), lines

    r = cli("checkpoints", "list", "short", "--store", fleet.store, "--json")
    listed = json.loads(r.output)
    assert [c["step"] for c in listed["checkpoints"]] == [1, 3, 5], listed  # every 2 rounds
    r = cli("checkpoints", "verify", "short", "--store", fleet.store)
    assert r.exit_code == 0, r.output
    corrupt_latest_checkpoint(listed["directory"])
    r = cli("checkpoints", "verify", "short", "--store", fleet.store)
    assert r.exit_code == 1 and "UNUSABLE" in r.output, r.output
    assert "newest usable: step 3" in r.output, r.output


@pytest.mark.slow
def test_a_detached_run_is_watched_paused_resumed_and_stopped(fleet):
    from distributed import Client

    from cluster_app.cli.status import placement_rows

    store, address = fleet.store, fleet.address
    where = ["--scheduler", address, "--store", store, "--model", "mlp"]
    args = ["--rounds", "100000", "--local-steps", "50", "--standby", "0"]
    proc = run("train", *where, "--run-id", "long", "--detach", *args)
    assert proc.returncode == 0 and proc.stdout == "long\n", proc.stdout + proc.stderr
    record = RunRecord(f"{store}/long")
    _wait_for(lambda: record.status().get("phase") == "running", 60, "the run to start")

    proc = run("status", "--scheduler", address, "--store", store, "--once", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    keys = {"worker", "role", "run", "version", "step", "loss", "load", "latency_ms", "score"}
    assert len(rows) == 2 and all(keys <= set(row) for row in rows), rows
    assert any(row["role"] == "active" and row["run"] == "long" for row in rows), rows
    r = cli("status", "--scheduler", address, "--store", store, "--once")
    assert r.exit_code == 0 and "latency ms" in r.output and "active" in r.output, r.output
    with Client(address, timeout=10) as client:  # the rows without the fleet monitor
        rows = placement_rows(client, store)
    assert [row["role"] for row in rows] == ["active", "active"], rows
    assert all(row["run"] == "long" and (row["latency_ms"] or 0) > 0 for row in rows), rows
    assert all(row["version"] is not None and row["step"] is not None for row in rows), rows

    r = cli("runs", "pause", "long", "--wait", "--timeout", "60", "--store", store)
    assert r.exit_code == 0 and "run long paused at round" in r.output, r.output
    paused = json.loads(cli("runs", "show", "long", "--json", "--store", store).output)
    assert paused["control"] == "paused" and paused["status"]["phase"] == "paused"
    assert cli("runs", "resume", "long", "--store", store).exit_code == 0
    _wait_for(lambda: record.status().get("phase") == "running", 30, "the run to go on")

    r = cli("runs", "stop", "long", "--wait", "--timeout", "60", "--store", store)
    assert r.exit_code == 0 and "run long stopped: " in r.output, r.output
    assert cli("runs", "resume", "long", "--store", store).exit_code == 2  # its loop has ended
    r = cli("runs", "resume", "long", "--scheduler", address, "--store", store)
    assert r.exit_code == 0 and f"a new loop on {address}" in r.output, r.output
    _wait_for(lambda: record.status().get("phase") == "running", 60, "the new loop")
    r = cli("runs", "attach", "long", "--scheduler", address, "--timeout", "2", "--store", store)
    assert r.exit_code == 1 and "still running after 2s" in r.output
    assert any(line.startswith("round") for line in r.output.splitlines())
    assert cli("runs", "stop", "long", "--wait", "--timeout", "60", "--store", store).exit_code == 0

    listed = {
        s["run_id"]: s for s in json.loads(cli("runs", "list", "--json", "--store", store).output)
    }
    assert listed["long"]["phase"] == "stopped" and listed["short"]["phase"] == "finished"


@pytest.mark.slow
def test_up_stops_on_ctrl_c_with_exit_0(fleet):
    """Ctrl-C in a terminal: SIGINT to the whole process group, workers included."""
    os.killpg(fleet.proc.pid, signal.SIGINT)
    assert fleet.proc.wait(60) == 0
    rest = []
    while not fleet.stdout.empty():
        rest.append(fleet.stdout.get())
    assert "stopping\n" in rest
    assert "KeyboardInterrupt" not in Path(fleet.stderr).read_text()  # the workers closed in order

"""A durable run survives its scheduler being killed and replaced (separate processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cluster_app import AgentCluster, AgentSpec, ParamStore
from cluster_app.cluster import worker_env
from cluster_app.recovery.runstate import RunState

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scheduler(port: int, store: str, log_path) -> subprocess.Popen:
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return _spawn(
            [
                os.path.join(BIN, "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
                "--preload",
                "cluster_app.keeper",
                "--keeper-store-url",
                store,
                "--keeper-interval",
                "1",
            ],
            log,
        )


def _spawn(cmd: list[str], log, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _tail(path, n: int = 40) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def _wait(predicate, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while not predicate():
        # on a timeout, the processes' own logs say where the run stopped
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + "\n".join(
            f"--- {os.path.basename(str(p))}:\n{_tail(p)}" for p in logs
        )
        time.sleep(0.2)


def test_run_survives_scheduler_restart(tmp_path):
    store = str(tmp_path / "store")
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [tmp_path / "scheduler-1.log", tmp_path / "scheduler-2.log", tmp_path / "workers.log"]
    procs = [_scheduler(port, store, logs[0])]
    # workers exit when their scheduler goes away; like a Kubernetes pod with restartPolicy
    # Always, a supervisor loop starts them again and they join the new scheduler
    worker_cmd = (
        f"{os.path.join(BIN, 'dask')} worker {address} --nworkers 2 --nthreads 1 "
        "--memory-limit 1.5GiB --no-dashboard"
    )
    with open(logs[2], "w") as log:
        workers = _spawn(
            ["bash", "-c", f"while true; do {worker_cmd}; sleep 1; done"],
            log,
            env={**os.environ, **worker_env()},
        )
    procs.append(workers)
    try:
        with AgentCluster(address, agent=SPEC, store_url=store, quiet=True) as ac:
            ac.client.wait_for_workers(2, timeout=120)
            run = ac.submit(
                rounds=30, local_steps=300, standby=0, codec="fp32", checkpoint_every_rounds=2
            )
        state = RunState(run.run_url)
        _wait(lambda: state.status().get("round", -1) >= 3, 120, "round 3", logs[::2])
        os.killpg(procs[0].pid, signal.SIGKILL)  # the scheduler dies: every task is forgotten
        procs[0].wait()
        killed_at = state.status()["version"]
        time.sleep(2)
        procs[0] = _scheduler(port, store, logs[1])  # a new scheduler at the same address
        status = None

        def finished():
            nonlocal status
            status = state.status()
            return status.get("phase") == "finished"

        _wait(finished, 300, "the run to finish after the restart", logs[1:])
        assert status["version"] == 30 > killed_at
        store_ = ParamStore(run.run_url)
        assert store_.versions() == list(range(31))  # nothing committed was lost or redone
        for v in store_.versions():
            store_.read(v)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

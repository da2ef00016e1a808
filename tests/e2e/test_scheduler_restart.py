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
from distributed import Client
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec, ParamStore
from cluster_app.cluster import worker_env
from cluster_app.placement import placement_snapshot
from cluster_app.runs.record import RunRecord

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
                "cluster_app.runs.keeper",
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
    def show_logs():  # on a timeout, the processes' own logs say where the run stopped
        print(f"timed out waiting for {what}")
        for p in logs:
            print(f"--- {os.path.basename(str(p))}:\n{_tail(p)}")

    poll_for(predicate, timeout=timeout, fail_func=show_logs, period=0.2)


class Cluster:
    """A scheduler with the keeper preloaded and two supervised workers, as separate processes;
    :meth:`restart_scheduler` kills the scheduler (kill -9) and starts a new one at the same
    address. Workers exit when their scheduler goes away; like Kubernetes pods with
    restartPolicy Always, a supervisor loop starts them again and they join the new one."""

    def __init__(self, root) -> None:
        self.root = root
        self.store = str(root / "store")
        self.port = _port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.restarts = 0
        self.workers_log = root / "workers.log"
        self.scheduler_log = root / "scheduler-0.log"
        self.scheduler = _scheduler(self.port, self.store, self.scheduler_log)
        worker_cmd = (
            f"{os.path.join(BIN, 'dask')} worker {self.address} --nworkers 2 --nthreads 1 "
            "--memory-limit 1.5GiB --no-dashboard"
        )
        with open(self.workers_log, "w") as log:
            self.workers = _spawn(
                ["bash", "-c", f"while true; do {worker_cmd}; sleep 1; done"],
                log,
                env={**os.environ, **worker_env()},
            )

    @property
    def logs(self) -> list:
        return [self.scheduler_log, self.workers_log]

    def restart_scheduler(self) -> None:
        os.killpg(self.scheduler.pid, signal.SIGKILL)  # every task and plugin is forgotten
        self.scheduler.wait()
        time.sleep(2)
        self.restarts += 1
        self.scheduler_log = self.root / f"scheduler-{self.restarts}.log"
        self.scheduler = _scheduler(self.port, self.store, self.scheduler_log)

    def close(self) -> None:
        for p in (self.scheduler, self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("restart"))
    try:
        yield c
    finally:
        c.close()


def _submit(cluster: Cluster, **kw):
    with AgentCluster(cluster.address, agent=SPEC, store_url=cluster.store, quiet=True) as ac:
        ac.client.wait_for_workers(2, timeout=120)
        return ac.submit(codec="fp32", checkpoint_every_rounds=2, **kw)


def test_run_survives_scheduler_restart(cluster):
    run = _submit(cluster, rounds=30, local_steps=300)
    state = RunRecord(run.run_url)
    _wait(lambda: state.status().get("round", -1) >= 3, 120, "round 3", cluster.logs)
    cluster.restart_scheduler()
    killed_at = state.status()["version"]
    status = None

    def finished():
        nonlocal status
        status = state.status()
        return status.get("phase") == "finished"

    _wait(finished, 300, "the run to finish after the restart", cluster.logs)
    assert status["version"] == 30 > killed_at
    store_ = ParamStore(run.run_url)
    assert store_.versions() == list(range(31))  # nothing committed was lost or redone
    for v in store_.versions():
        store_.read(v)


def test_placement_is_back_after_a_scheduler_restart(cluster):
    """The keeper reinstalls the placement plugin and the RTT probe with the agents, so the
    rounds after a restart are placed by our plugin, not by Dask's default placement."""
    run = _submit(cluster, rounds=40, local_steps=300)
    state = RunRecord(run.run_url)
    _wait(lambda: state.status().get("round", -1) >= 1, 120, "round 1", cluster.logs)
    cluster.restart_scheduler()
    restarted_at = state.status()["round"]
    _wait(
        lambda: state.status().get("round", -1) > restarted_at,
        180,
        "a round after the restart",
        cluster.logs,
    )
    with Client(cluster.address) as client:
        # the plugin's handler answers on the new scheduler, and it places the run's rounds
        # (waited for: once, the record showed a round after the restart before the
        # reinstalled plugin had placed any)
        _wait(
            lambda: (placement_snapshot(client).get("kind") or "").startswith("agent-round"),
            120,
            "a round placed by the reinstalled plugin",
            cluster.logs,
        )
        placed = placement_snapshot(client)["decisions_total"]
        assert placed >= 2  # the two shards of that round, at least
        now = state.status()["round"]
        _wait(lambda: state.status().get("round", -1) > now, 120, "the next round", cluster.logs)
        assert placement_snapshot(client)["decisions_total"] >= placed + 2  # it placed it too
        probes = client.run(lambda dask_worker: "cluster-app-rtt" in dask_worker.plugins)
        assert len(probes) == 2 and all(probes.values())
    state.set_control("stopped")  # (the fixture's teardown kills what is left)

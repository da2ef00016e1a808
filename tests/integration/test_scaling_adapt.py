"""The adaptive target on a real local cluster: ``LocalCluster.adapt()`` follows our policy, and
the dask-kubernetes operator's own code asking the scheduler gets our number."""

from __future__ import annotations

import threading
import time

import dask.config
import pytest
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec

pytestmark = pytest.mark.slow

DIGITS = AgentSpec.from_config(model="mlp", dataset="digits")


def _work(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i * i


def _n(ac) -> int:
    return len(ac.client.scheduler_info(n_workers=-1)["workers"])


def test_adapt_scales_up_on_a_burst_down_when_idle_and_keeps_the_run_and_its_standby(tmp_path):
    settings = {
        "cluster-app.scaling.scale-down-seconds": 4.0,
        "cluster-app.scaling.target-backlog-seconds": 2.0,
    }
    with (
        dask.config.set(settings),
        AgentCluster(
            n_workers=3, agent=DIGITS, store_url=str(tmp_path / "store"), quiet=True
        ) as ac,
    ):
        ac.cluster.adapt(minimum=1, maximum=5, interval="500ms", wait_count=2)
        result: dict = {}

        def train():  # 2 agents and 1 hot standby: the policy wants 3 while it runs
            result["run"] = ac.train(rounds=200, local_steps=5, agents=2, standby=1, progress=False)

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        poll_for(lambda: ac.client.run_on_scheduler(_target) >= 3, timeout=120)
        seen: list[int] = []
        # a burst of 16 other agent tasks (1 s each, 8 s as Dask guesses before any finished):
        # 2 s of work per worker wanted, so the fleet grows to the adapt maximum
        futs = [
            ac.client.submit(_work, i, 1.0, key=f"agent-burst-{i}", pure=False) for i in range(16)
        ]
        deadline = time.monotonic() + 120
        while not all(f.done() for f in futs) and time.monotonic() < deadline:
            seen.append(_n(ac))
            time.sleep(0.5)
        assert [f.result() for f in futs] == [i * i for i in range(16)]  # nothing lost
        assert max(seen) == 5, seen
        # quiet again: back to the run's 3 (its agents and its standby are never retired)
        poll_for(lambda: _n(ac) == 3, timeout=60)
        trainer.join(600)
        run = result["run"]
        assert len(run.rounds) == 200 and run.version >= 200  # every round committed
        late = run.rounds[-20:]
        assert all(len(r.workers) == 2 and len(r.standby) == 1 for r in late)
        # the run over: down to the minimum
        poll_for(lambda: _n(ac) == 1, timeout=60)


def _target(dask_scheduler) -> int:
    return dask_scheduler.adaptive_target()


def _dask_default(dask_scheduler) -> int:
    from distributed.scheduler import Scheduler

    return Scheduler.adaptive_target(dask_scheduler)


@pytest.mark.parametrize("api_route", [True, False], ids=["http", "rpc"])
def test_the_operators_own_query_gets_our_target(tmp_path, monkeypatch, api_route):
    from dask_kubernetes.operator.controller import controller

    routes = dask.config.get("distributed.scheduler.http.routes")
    if api_route:
        routes = [*routes, "distributed.http.scheduler.api"]
    with (
        dask.config.set(
            {"cluster-app.scaling.minimum": 3, "distributed.scheduler.http.routes": routes}
        ),
        AgentCluster(n_workers=1, agent=DIGITS, store_url=str(tmp_path / "s"), quiet=True) as ac,
    ):
        info = ac.client.scheduler_info()
        host = info["address"].split("//")[1].split(":")[0]
        dashboard = f"http://{host}:{info['services']['dashboard']}"

        async def address(service, namespace, port_name="tcp-comm", allow_external=True):
            # what the operator would look up in the Kubernetes API (none can run here)
            return dashboard if port_name == "http-dashboard" else info["address"]

        monkeypatch.setattr(controller, "get_scheduler_address", address)
        got = ac.client.sync(controller.get_desired_workers, "cluster-scheduler", "default")
        assert got == 3 == ac.client.run_on_scheduler(_target)  # our policy: the minimum
        assert ac.client.run_on_scheduler(_dask_default) != 3  # not Dask's own target

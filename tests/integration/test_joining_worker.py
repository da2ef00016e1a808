"""A worker that joins a fleet mid-run holds the run's newest version before its first task."""

from __future__ import annotations

import pytest
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec
from cluster_app.agent.worker import PLUGIN_NAME

pytestmark = pytest.mark.slow

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})


def test_a_joining_worker_loads_the_current_version_before_it_takes_work(store_url):
    with AgentCluster(n_workers=1, agent=SPEC, store_url=store_url, quiet=True) as ac:
        first = set(ac.client.scheduler_info()["workers"])
        run = ac.submit(rounds=10_000, local_steps=20, standby=0, max_seconds=120)
        poll_for(lambda: (run.status().get("version") or 0) >= 3, timeout=120, period=0.2)
        ac.cluster.scale(2)
        ac.client.wait_for_workers(2)
        (new,) = set(ac.client.scheduler_info()["workers"]) - first

        def cold_start():
            def read(dask_worker):
                plugin = dask_worker.plugins.get(PLUGIN_NAME)
                return dict(plugin.cold_start) if plugin is not None else {}

            return ac.client.run(read, workers=[new])[new]

        poll_for(lambda: "restored" in cold_start(), timeout=120, period=0.2)
        info = cold_start()
        got = info["restored"]
        assert got["run"] == run.run_url and got["version"] >= 3
        assert got["pull_bytes"] > 0 and info["restore_s"] > 0
        run.stop()
        assert run.wait(timeout=120)["phase"] == "stopped"

"""The agent WorkerPlugin on in-process clusters (distributed.utils_test.gen_cluster)."""

from __future__ import annotations

import asyncio
import tempfile

from distributed import Worker
from distributed.utils_test import gen_cluster

from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import PLUGIN_NAME, AgentPlugin, agent_init, agent_round
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 16, "n_layers": 1})


@gen_cluster(client=True, timeout=60)
async def test_every_worker_gets_an_agent_and_joiners_too(c, s, a, b):
    await c.register_plugin(AgentPlugin(SPEC))
    for w in (a, b):
        assert w.plugins[PLUGIN_NAME].agent is not None
        assert w.plugins[PLUGIN_NAME].agent.spec == SPEC
    async with Worker(s.address) as late:
        assert late.plugins[PLUGIN_NAME].agent is not None


# zarr runs its own IO event-loop thread (and executor) for the process: not a leak of ours
@gen_cluster(client=True, timeout=60, clean_kwargs={"threads": False})
async def test_agent_metrics_reach_the_scheduler(c, s, a, b):
    url = tempfile.mkdtemp()
    await c.register_plugin(AgentPlugin(SPEC))
    v = await c.submit(agent_init, SPEC, url, pure=False)
    res = await c.submit(
        agent_round,
        spec=SPEC,
        sync=SyncSpec(codec="int8", async_push=False),
        store_url=url,
        base_version=v,
        round=0,
        shard=0,
        num_shards=1,
        steps=7,
        workers=[a.address],
        pure=False,
    )
    assert res.worker == a.address and res.steps == 7
    assert ParamStore(url).get_object(res.push.delta)  # the delta was pushed to the store

    for _ in range(100):  # heartbeats carry worker.metrics into WorkerState.metrics
        metrics = s.workers[a.address].metrics
        if metrics.get("cluster_app_steps") == 7:
            break
        await asyncio.sleep(0.05)
    assert metrics["cluster_app_steps"] == 7
    assert metrics["cluster_app_busy"] == 0
    assert s.workers[b.address].metrics["cluster_app_steps"] == 0


@gen_cluster(client=True, timeout=60)
async def test_task_without_plugin_says_what_to_do(c, s, a, b):
    fut = c.submit(agent_init, SPEC, "/nonexistent", pure=False)
    try:
        await fut
    except RuntimeError as e:
        assert "register AgentPlugin" in str(e)
    else:
        raise AssertionError("expected a RuntimeError")


SCRIPT = """
import jax  # before the cluster: a spawned worker re-imports this module first
import json, sys
import dask
from cluster_app import AgentCluster, AgentSpec

if __name__ == "__main__":
    spec = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 8, "n_layers": 1})
    with dask.config.set({"cluster-app.cluster.compilation-cache": sys.argv[1]}):
        with AgentCluster(n_workers=1, agent=spec, store_url=sys.argv[2], quiet=True) as ac:
            seen = ac.client.run(lambda: jax.config.jax_compilation_cache_dir)
    print(json.dumps(list(seen.values())))
"""


def test_workers_use_the_compilation_cache_when_the_script_imported_jax_first(tmp_path):
    """JAX reads its cache settings at import, which a spawned worker does (re-importing the
    script) before the nanny sets the environment: the plugin applies them itself."""
    import json
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "jax-cache"
    out = subprocess.run(
        [sys.executable, str(script), str(cache), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [str(cache)]
    assert any(cache.iterdir())  # the worker's programs were written there

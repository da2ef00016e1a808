"""PlacementPlugin on real (in-process) Dask clusters: distributed.utils_test.gen_cluster.

The scheduler runs with ``validate=True``, so Dask checks its own invariants after every
transition the plugin causes. Workers here are in-process, so module globals double as a
record of what ran where.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import defaultdict

import dask
import pytest
from distributed import Client, LocalCluster, Nanny, Worker, get_task_stream, get_worker
from distributed.diagnostics.progress import Progress
from distributed.utils_test import async_poll_for, gen_cluster, poll_for

from cluster_app.placement import PlacementPlugin, PlacementSettings, RttProbe, placement_snapshot
from cluster_app.placement.plugin import PARK, PLUGIN_NAME
from cluster_app.placement.probe import RTT_METRIC
from cluster_app.testing.emulate import Handicap, work

VALIDATE = {"validate": True}
GATE = threading.Event()
STARTS: defaultdict[str, list[str]] = defaultdict(list)
DONE: defaultdict[str, int] = defaultdict(int)
FAILS: defaultdict[str, int] = defaultdict(int)


def where(seconds: float = 0.0) -> str:
    """Sleep (times the worker's slowdown), record the run, return the worker's address."""
    w = get_worker()
    key = w.get_current_task()
    STARTS[key].append(w.address)
    work(seconds)
    DONE[key] += 1
    return w.address


def stamp(seconds: float = 0.0) -> float:
    t = time.monotonic()
    work(seconds)
    return t


def gate() -> str:
    GATE.wait(20)
    return get_worker().address


def inc(x: int) -> int:
    return x + 1


def boom() -> None:
    raise ZeroDivisionError("boom")


def flaky(name: str, fail_times: int) -> int:
    FAILS[name] += 1
    if FAILS[name] <= fail_times:
        raise ValueError(f"attempt {FAILS[name]} of {name} fails")
    return FAILS[name]


def plugin_of(s) -> PlacementPlugin:
    return s.plugins[PLUGIN_NAME]


@pytest.fixture(autouse=True)
def _reset():
    GATE.clear()
    for d in (STARTS, DONE, FAILS):
        d.clear()
    yield
    GATE.set()  # never leave a task thread waiting


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs=VALIDATE)
async def test_priority_orders_the_queue_fifo_within_a_priority(c, s, a):
    # no prefetch: every task waits in the queue while the only worker is busy
    await c.register_plugin(PlacementPlugin(PlacementSettings(aging=0.0, max_prefetch=0)))
    await c.gather(c.map(stamp, [0.01] * 3, key=[f"agent-{p}-99" for p in ("low", "mid", "high")]))
    block = c.submit(gate, key="agent-block-0")
    await async_poll_for(lambda: "agent-block-0" in a.state.tasks)
    low = [c.submit(stamp, key=f"agent-low-{i}", priority=0) for i in range(4)]
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) == 4)
    high = [c.submit(stamp, key=f"agent-high-{i}", priority=10) for i in range(4)]
    mid = [c.submit(stamp, key=f"agent-mid-{i}", priority=5) for i in range(4)]
    # the first high one outranks everything the busy worker holds, so it is sent on at once
    # (express: the worker runs it next); the rest waits in the queue, by priority
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) == 11)
    snap = await placement_snapshot(c)
    assert [list(x) for x in snap["queue_by_priority"]] == [[10, 3], [5, 4], [0, 4]]
    assert all(s.tasks[f.key].state == "no-worker" for f in low + mid + high[1:])
    assert s.tasks[low[0].key].worker_restrictions == {PARK}
    GATE.set()
    await block
    started = dict(zip([f.key for f in low + mid + high], await c.gather(low + mid + high)))
    order = sorted(started, key=started.get)
    assert order == [f.key for f in high + mid + low]


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE)
async def test_a_slow_worker_receives_less_work(c, s, a, b):
    await c.register_plugin(Handicap({b.name: (4.0, 0.0)}))
    await c.register_plugin(PlacementPlugin())
    res = await c.gather(c.map(where, [0.02] * 40, key=[f"agent-w-{i}" for i in range(40)]))
    assert res.count(b.address) * 2 < res.count(a.address), res
    snap = await placement_snapshot(c, kind="agent-w")
    slowness = {w: snap["workers"][w]["slowness"] for w in (a.address, b.address)}
    assert slowness[b.address] > 2.5 * slowness[a.address]  # relative to the fleet median


@gen_cluster(client=True, nthreads=[("", 2)] * 2, scheduler_kwargs=VALIDATE)
async def test_a_loaded_worker_receives_less_work(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    other = c.submit(gate, key="other-long-0", workers=[b.address])  # not an agent task
    await async_poll_for(lambda: "other-long-0" in b.state.tasks)
    await asyncio.sleep(0.5)  # a refresh sees it
    assert "other-long-0" not in plugin_of(s).managed
    res = await c.gather(c.map(where, [0.03] * 24, key=[f"agent-l-{i}" for i in range(24)]))
    assert res.count(b.address) < res.count(a.address), res
    GATE.set()
    assert await other == b.address


# one worker 60 ms away from the scheduler (each way), with the round-trip probe installed
@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE, timeout=60)
async def test_a_high_latency_worker_receives_less_work(c, s, a, b):
    await c.register_plugin(RttProbe())
    await c.register_plugin(Handicap({b.name: (1.0, 0.06)}))
    await async_poll_for(
        lambda: (s.workers[b.address].metrics.get(RTT_METRIC) or 0) > 0.06, timeout=20
    )
    await c.register_plugin(PlacementPlugin())
    res = await c.gather(c.map(where, [0.02] * 30, key=[f"agent-r-{i}" for i in range(30)]))
    assert res.count(b.address) * 2 < res.count(a.address), res
    snap = await placement_snapshot(c, kind="agent-r")
    assert snap["workers"][b.address]["latency"] > snap["workers"][a.address]["latency"]


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE, timeout=60)
async def test_worker_death_requeues_and_a_joiner_is_used_at_once(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    futs = c.map(where, [0.1] * 16, key=[f"agent-d-{i}" for i in range(16)])
    await async_poll_for(lambda: any(STARTS[k] == [b.address] for k in list(STARTS)))
    await b.close()
    async with Worker(s.address, nthreads=1) as late:
        res = await c.gather(futs)
        assert late.address in res  # eligible as soon as it joined
        assert b.address not in res  # what b computed was lost with it and recomputed
        snap = await placement_snapshot(c)
        assert snap["requeued_total"] >= 1  # what was running on b came back to the queue
        for f in futs:  # none lost; none that stayed on a surviving worker ran twice
            if b.address not in STARTS[f.key]:
                assert DONE[f.key] == 1, (f.key, STARTS[f.key])
        assert not plugin_of(s).dispatcher.inflight


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE)
async def test_results_errors_retries_and_dependencies_as_in_plain_dask(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    assert await c.submit(inc, 1, key="agent-inc-1") == 2
    with pytest.raises(ZeroDivisionError, match="boom"):
        await c.submit(boom, key="agent-boom-1")
    assert await c.submit(flaky, "twice", 2, key="agent-flaky-1", retries=2) == 3
    with pytest.raises(ValueError, match="attempt 2 of once-more"):
        await c.submit(flaky, "once-more", 5, key="agent-flaky-2", retries=1)
    deps = [c.submit(inc, i, key=f"agent-dep-{i}") for i in range(3)]
    assert await c.submit(sum, deps, key="agent-sum-0") == 6
    failed = c.submit(flaky, "retry-later", 1, key="agent-flaky-3")
    with pytest.raises(ValueError):
        await failed
    await c.retry([failed])  # the client's retry goes back through the queue
    assert await failed == 2
    plugin = plugin_of(s)
    assert plugin.dispatcher.decisions_total >= 12
    assert not plugin.dispatcher.inflight and not len(plugin.dispatcher.queue)


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs=VALIDATE)
async def test_cancel_queued_and_running_tasks(c, s, a):
    await c.register_plugin(PlacementPlugin())
    block = c.submit(gate, key="agent-block-1")
    queued = c.map(where, [0.0] * 5, key=[f"agent-c-{i}" for i in range(5)])
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) == 5)
    await c.cancel(queued)
    await async_poll_for(lambda: not any(f.key in s.tasks for f in queued))
    assert len(plugin_of(s).dispatcher.queue) == 0
    assert all(f.status == "cancelled" for f in queued)
    await c.cancel(block)  # running
    await async_poll_for(lambda: "agent-block-1" not in s.tasks)
    GATE.set()
    assert not STARTS  # nothing that was cancelled in the queue ever ran
    assert await c.submit(inc, 41, key="agent-after-1") == 42
    await async_poll_for(
        lambda: not plugin_of(s).managed or list(plugin_of(s).managed) == ["agent-after-1"]
    )


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE)
async def test_task_stream_and_progress_see_agent_tasks(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    async with get_task_stream(client=c) as ts:
        futs = c.map(where, [0.01] * 6, key=[f"agent-t-{i}" for i in range(6)])
        progress = Progress([f.key for f in futs], scheduler=s)
        await progress.setup()
        await c.gather(futs)
    assert {f.key for f in futs} <= {d["key"] for d in ts.data}
    await async_poll_for(lambda: progress.status == "finished")


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE)
async def test_which_tasks_the_plugin_manages(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    pinned = c.submit(where, key="agent-pinned-0", workers=[b.address])
    loose = c.submit(where, key="agent-loose-0", workers=[b.address], allow_other_workers=True)
    with dask.annotate(cluster_app_placement=True):
        annotated = c.submit(where, key="plain-annotated-0")
    plain = c.submit(where, key="plain-0")
    assert await pinned == b.address and await loose == b.address  # preferred and free
    await c.gather([annotated, plain])
    managed = set(plugin_of(s).managed)
    assert managed == {"agent-loose-0", "plain-annotated-0"}


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs=VALIDATE)
async def test_unregistering_hands_queued_tasks_back_to_dask(c, s, a):
    await c.register_plugin(PlacementPlugin(PlacementSettings(refresh_interval=0.05)))
    block = c.submit(gate, key="agent-block-2")
    queued = c.map(inc, range(4), key=[f"agent-u-{i}" for i in range(4)])
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) == 4)
    await c.unregister_scheduler_plugin(PLUGIN_NAME)
    await async_poll_for(lambda: all(s.tasks[f.key].state != "no-worker" for f in queued))
    assert all(s.tasks[f.key].worker_restrictions is None for f in queued)
    assert "cluster_app_placement" not in s.handlers
    GATE.set()
    assert await c.gather(queued) == [1, 2, 3, 4]
    await block


@gen_cluster(client=True, nthreads=[("", 1)] * 2, scheduler_kwargs=VALIDATE)
async def test_snapshot_reports_signals_scores_queue_and_rate(c, s, a, b):
    await c.register_plugin(RttProbe())
    await c.register_plugin(PlacementPlugin(PlacementSettings(refresh_interval=0.05)))
    await c.gather(c.map(where, [0.005] * 10, key=[f"agent-s-{i}" for i in range(10)]))
    await asyncio.sleep(0.2)
    snap = await placement_snapshot(c)
    assert snap["kind"] == "agent-s" and snap["decisions_total"] == 10
    assert snap["decisions_per_s"] > 0 and snap["queue_depth"] == 0
    assert set(snap["workers"]) == {a.address, b.address}
    for w in snap["workers"].values():
        assert {"cpu", "load", "latency", "score", "slowness", "rtt", "capacity"} <= set(w)
        assert 0 <= w["load"] <= 1 and 0 <= w["latency"] <= 1
    assert snap["settings"]["weights"] == {"load": 0.6, "latency": 0.3, "priority": 0.1}


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs=VALIDATE)
async def test_restart_hook_starts_from_an_empty_queue_and_keeps_what_it_learned(c, s, a):
    await c.register_plugin(PlacementPlugin())
    await c.gather(c.map(where, [0.01] * 3, key=[f"agent-x-{i}" for i in range(3)]))
    block = c.submit(gate, key="agent-block-3")
    queued = c.map(inc, range(3), key=[f"agent-y-{i}" for i in range(3)])
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) == 3)
    plugin = plugin_of(s)
    plugin.restart(s)  # what Scheduler.restart calls (after forgetting every task)
    assert not plugin.managed and not len(plugin.dispatcher.queue)
    assert plugin.dispatcher.fleet.busy.tolist() == [0]
    assert plugin.dispatcher.fleet.median_duration("agent-x") > 0
    await c.cancel([block, *queued])
    GATE.set()
    assert await c.submit(inc, 1, key="agent-z-0") == 2


@pytest.mark.slow
@gen_cluster(
    client=True, nthreads=[("", 1)] * 2, Worker=Nanny, scheduler_kwargs=VALIDATE, timeout=60
)
async def test_client_restart_with_the_plugin(c, s, a, b):
    await c.register_plugin(PlacementPlugin())
    assert await c.gather(c.map(inc, range(4), key=[f"agent-x-{i}" for i in range(4)]))
    # (held: futures dropped at once would release their tasks before they ever queue)
    pending = c.map(work, [2.0] * 6, key=[f"agent-y-{i}" for i in range(6)])
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.queue) > 0)
    await c.restart()
    del pending
    plugin = plugin_of(s)
    assert not len(plugin.dispatcher.queue) and not plugin.dispatcher.inflight
    assert sorted(plugin.dispatcher.fleet.addrs) == sorted(s.workers)  # the new processes
    res = await c.gather(c.map(inc, range(4), key=[f"agent-z-{i}" for i in range(4)]))
    assert res == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_worker_killed_with_sigkill_loses_no_agent_task():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as lc,
        Client(lc) as c,
    ):
        c.register_plugin(PlacementPlugin())
        futs = c.map(work, [0.4] * 8, range(8), key=[f"agent-k-{i}" for i in range(8)])

        def busy() -> str | None:
            return next((w for w, keys in c.processing().items() if keys), None)

        poll_for(lambda: busy() is not None, timeout=20, period=0.02)
        victim = busy()
        pid = c.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        assert c.gather(futs) == list(range(8))  # none lost, each result once
        snap = placement_snapshot(c)
        assert snap["requeued_total"] >= 1 and snap["queue_depth"] == 0
        assert victim not in snap["workers"]

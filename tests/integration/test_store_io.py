"""ParamStore against real storage: congestion, concurrent processes, crashes, S3."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from zarr.storage import WrapperStore

from cluster_app.errors import CommitConflict
from cluster_app.sync.congestion import AIMDWindow, WindowedExecutor
from cluster_app.sync.store import ParamStore

HERE = os.path.dirname(__file__)


class CongestedStore(WrapperStore):
    """A zarr store whose chunk writes slow down with the number of writes in flight."""

    def __init__(self, store, base=0.002, per_writer=0.004):
        self._store = store
        self.base, self.per_writer = base, per_writer
        self.active = self.peak = 0

    def _with_store(self, store):
        return type(self)(store, self.base, self.per_writer)

    async def set(self, key, value):
        if "/c/" not in key and not key.split("/")[-1].isdigit():
            return await self._store.set(key, value)  # metadata: not congested
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.base + self.per_writer * self.active)
            await self._store.set(key, value)
        finally:
            self.active -= 1


def test_write_window_adapts_to_a_slow_store(tmp_path):
    wrapped = []

    def wrap(store):
        wrapped.append(CongestedStore(store))
        return wrapped[-1]

    executor = WindowedExecutor(AIMDWindow(initial=2, maximum=32, tolerance=2.0))
    store = ParamStore(str(tmp_path), chunk_elems=256, executor=executor, wrap_store=wrap)
    leaves = {
        f"layer{i}": np.random.default_rng(i).normal(size=(4096,)).astype(np.float32)
        for i in range(20)
    }  # 20 leaves x 16 chunks = 320 chunk writes
    store.put_object(leaves)
    executor.close()
    sizes = [s for _, s in executor.window.trace]
    assert len(sizes) == 320
    assert max(sizes) > 2  # probed upwards from the initial window
    assert any(b < a for a, b in itertools.pairwise(sizes))  # halved when latency rose
    assert wrapped[0].peak < 32  # never flooded the store with everything allowed
    (name,) = [
        p.rsplit("/", 1)[-1]
        for p in store.objects.fs.ls(f"{store.root}/objects", detail=False)
        if not p.endswith("zarr.json")
    ]
    got = store.get_object(name)
    np.testing.assert_array_equal(got["layer3"], leaves["layer3"])


def _commit_in_process(url, version, seed, barrier, out):
    store = ParamStore(url)
    params = {"w": np.full((64, 64), seed, np.float32)}
    barrier.wait()
    try:
        store.commit_full(params, version=version)
        out.put(seed)
    except CommitConflict:
        out.put(-1)


@pytest.mark.slow
def test_concurrent_processes_exactly_one_wins_each_version(tmp_path):
    url = str(tmp_path / "store")
    ParamStore(url)
    ctx = mp.get_context("spawn")
    for version in range(3):
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_commit_in_process, args=(url, version, s, barrier, out))
            for s in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = sorted(out.get() for _ in procs)
        winners = [r for r in results if r >= 0]
        assert len(winners) == 1 and results.count(-1) == 3
        got, _ = ParamStore(url).read(version)
        assert got["w"][0, 0] == winners[0]  # the visible version is the winner's, whole
    assert ParamStore(url).versions() == [0, 1, 2]


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_no_visible_version(tmp_path):
    url = str(tmp_path / "store")
    store = ParamStore(url)
    store.commit_full({"w": np.zeros((8, 8), np.float32)}, version=0)
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {HERE!r})
        from test_store_io import CongestedStore
        from cluster_app.sync.store import ParamStore
        slow = lambda s: CongestedStore(s, base=0.05, per_writer=0.0)
        store = ParamStore({url!r}, chunk_elems=64, wrap_store=slow)
        print("writing", flush=True)
        store.commit_full({{"w": np.ones((4096, 8), np.float32)}}, version=1)
        print("committed", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(1.0)  # well into the ~3 s of chunk writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fresh = ParamStore(url)
    assert fresh.versions() == [0]
    got, rec = fresh.read()
    assert rec.version == 0 and not got["w"].any()
    # the half-written object exists but is unsealed, so nothing can mistake it for data
    objects = fresh.objects.fs.ls(f"{fresh.root}/objects", detail=False)
    partial = [o.rsplit("/", 1)[-1] for o in objects if rec.object not in o]
    assert partial and all(fresh.objects.seal(name) is None for name in partial)
    # and the next writer takes version 1 normally
    fresh.commit_full({"w": np.full((8, 8), 2, np.float32)}, version=1)
    assert fresh.read()[0]["w"][0, 0] == 2


@pytest.mark.slow
def test_s3_round_trip_and_exclusive_commit(s3):
    url = f"s3://cluster-app-test/run-{os.getpid()}-{time.monotonic_ns()}"
    store = ParamStore(url, storage_options=s3)
    p0 = {
        "blocks/0/w": np.random.default_rng(0).normal(size=(300, 40)).astype(np.float32),
        "b": np.arange(7, dtype=np.float32),
    }
    store.commit_full(p0, version=0)
    outcomes = []
    barrier = threading.Barrier(4)

    def writer(i):
        s = ParamStore(url, storage_options=s3)
        s.fs.exists = lambda path: False  # skip the early exit: the conditional PUT decides
        barrier.wait()
        try:
            s.commit_full({k: v + i for k, v in p0.items()}, version=1, parent=0)
            outcomes.append(i)
        except CommitConflict:
            outcomes.append(-1)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o >= 0]
    assert len(winners) == 1 and outcomes.count(-1) == 3
    reader = ParamStore(url, storage_options=s3)
    assert reader.versions() == [0, 1]
    got, rec = reader.read(1)
    np.testing.assert_array_equal(got["b"], p0["b"] + winners[0])
    assert rec.nbytes > 0

from __future__ import annotations

import numpy as np
import pytest

from cluster_app.sync.codecs import get_codec
from cluster_app.sync.coordinator import Coordinator
from cluster_app.sync.push import Push
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore

SHAPES = {"w": (40, 30), "b": (30,)}


def _params(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


@pytest.fixture
def store(store_url):
    return ParamStore(store_url)


def _coordinator(store, **kw):
    spec = SyncSpec(**{"codec": "fp32", "full_every": 10**6, "push_timeout": 0.2, **kw})
    p0 = _params(0)
    store.commit_full(p0, version=0)
    c = Coordinator(store, spec)
    c.start(p0, 0)
    return c, p0


def _push(store, delta, base_version, codec="fp32", i=0):
    enc = {k: get_codec(codec).encode(v)[0] for k, v in delta.items()}
    name = store.put_object(enc, codec=codec)
    return Push(worker=f"w{i}", round=0, shard=i, base_version=base_version, delta=name)


def test_fold_averages_deltas(store, record_nbytes):
    c, p0 = _coordinator(store)
    deltas = [_params(i) for i in (1, 2, 3)]
    stats = c.fold([_push(store, d, 0, i=i) for i, d in enumerate(deltas)], local_steps=10)
    assert stats.accepted == 3 and stats.version == 1 and stats.kind == "delta"
    got, rec = store.read(1)
    assert rec.parent == 0
    for k in p0:
        np.testing.assert_allclose(
            got[k], p0[k] + np.mean([d[k] for d in deltas], axis=0), rtol=1e-5, atol=1e-5
        )
    assert stats.push_bytes > 0
    assert stats.commit_bytes == rec.nbytes + record_nbytes(store.url, 1)  # object + record
    assert stats.fold_bytes == stats.push_bytes  # each push read back once, whole


def test_published_params_match_what_readers_reconstruct(store, record_nbytes):
    c, _ = _coordinator(store, codec="int4", full_every=30)
    for r in range(5):  # delta, delta, full, delta, delta
        c.fold([_push(store, _params(10 + r), r, codec="int4")], local_steps=10)
    kinds = [store.record(v).kind for v in range(1, 6)]
    assert kinds == ["delta", "delta", "full", "delta", "delta"]
    # the snapshot carries the round's int4 delta: a holder of version 2 reads only that
    snap = store.record(3)
    assert snap.delta["codec"] == "int4" and snap.parent == 2
    holder = ParamStore(store.url)
    p2, _ = holder.read(2)
    before = holder.bytes_read
    p3, _ = holder.read(3, have=(2, p2))
    assert holder.bytes_read - before == snap.delta["nbytes"] + record_nbytes(store.url, 3)
    np.testing.assert_array_equal(p3["w"], ParamStore(store.url).read(3)[0]["w"])
    fresh = ParamStore(store.url)  # a new reader walks back to the v3 snapshot
    got, _ = fresh.read(5)
    for k in got:
        np.testing.assert_array_equal(got[k], c.published[k])
    # the master keeps what int4 dropped; published trails it by less than one quantum
    for k in got:
        scale = np.abs(c.master[k] - got[k]).max()
        assert scale < np.abs(_params(14)[k]).max() / 7


def test_a_runs_final_version_is_the_exact_master(store):
    c, _ = _coordinator(store, codec="int4")
    # the mean of two int4 deltas is off int4's grid: publishing it leaves a residual
    c.fold([_push(store, _params(10 + i), 0, "int4", i) for i in (0, 1)], local_steps=10)
    assert c.unpublished()
    pushes = [_push(store, _params(12 + i), 1, "int4", i) for i in (0, 1)]
    stats = c.fold(pushes, local_steps=10, final=True)
    rec = store.record(2)
    assert stats.kind == "full" and rec.kind == "full" and rec.meta["final"] and rec.delta is None
    got, _ = ParamStore(store.url).read(2)
    for k in got:
        np.testing.assert_array_equal(got[k], c.master[k])
    assert not c.unpublished() and c.finish() is None  # nothing left: no extra version
    assert store.latest() == 2


def test_finish_commits_the_unsent_residual_of_a_run_stopped_early(store):
    c, _ = _coordinator(store, codec="int4")
    c.fold([_push(store, _params(10 + i), 0, "int4", i) for i in (0, 1)], local_steps=10)
    master = {k: v.copy() for k, v in c.master.items()}
    rec = c.finish({"round": 0})
    assert rec is not None and rec.version == 2 and rec.parent == 1 and rec.kind == "full"
    got, _ = ParamStore(store.url).read(2)
    for k in got:
        np.testing.assert_array_equal(got[k], master[k])
    assert c.finish() is None and store.latest() == 2


def test_bad_deltas_are_rejected_and_counted(store):
    c, p0 = _coordinator(store)
    good = _params(1)
    wrong_shape = {"w": np.zeros((3, 3), np.float32), "b": np.zeros(30, np.float32)}
    nan = _params(2)
    nan["w"][0, 0] = np.nan
    nan_name = "delta-nan"
    store.objects.write(nan_name, nan, {"kind": "delta", "codec": "fp32"})  # a buggy writer
    results = [
        _push(store, good, 0),
        _push(store, wrong_shape, 0),
        Push(worker="w9", round=0, shard=9, base_version=0, delta=nan_name),
        Push(worker="w8", round=0, shard=8, base_version=0, error="leaf 'w' contains NaN or Inf"),
    ]
    stats = c.fold(results, local_steps=10)
    assert stats.accepted == 1
    assert stats.rejected["invalid"] == 3
    got, _ = store.read(1)
    np.testing.assert_allclose(got["w"], p0["w"] + good["w"], rtol=1e-6)  # not poisoned
    assert np.isfinite(got["w"]).all()


def test_corrupt_delta_is_rejected(store, corrupt_chunk):
    c, p0 = _coordinator(store)
    res = _push(store, _params(1), 0)
    corrupt_chunk(store.url, res.delta, "_packed")  # (a delta's leaves share one array)
    stats = c.fold([res], local_steps=10)
    assert stats.rejected["corrupt"] == 1 and stats.accepted == 0
    np.testing.assert_array_equal(store.read(1)[0]["w"], p0["w"])


def test_staleness_weights_and_bound(store):
    c, _p0 = _coordinator(store, max_staleness=1)
    c.fold([_push(store, _params(1), 0)], local_steps=10)  # -> v1
    base = store.read(1)[0]
    d = _params(2)
    stats = c.fold([_push(store, d, 0)], local_steps=10)  # stale by 1: weight 1/2
    assert stats.accepted == 1
    np.testing.assert_allclose(
        store.read(2)[0]["b"], base["b"] + 0.5 * d["b"], rtol=1e-5, atol=1e-6
    )
    stats = c.fold([_push(store, d, 0)], local_steps=10)  # stale by 2 > bound
    assert stats.accepted == 0 and stats.rejected["stale"] == 1


def test_unsealed_push_is_deferred_then_used(store):
    c, _ = _coordinator(store)
    late = Push(worker="w1", round=0, shard=1, base_version=0, delta="delta-late")
    stats = c.fold([late], local_steps=10)  # not written yet
    assert stats.deferred == 1 and stats.accepted == 0
    store.put_object({k: v for k, v in _params(3).items()}, name="delta-late")
    stats = c.fold([], local_steps=10)
    assert stats.accepted == 1 and stats.deferred == 0


def test_corrupted_latest_version_falls_back(store, corrupt_chunk):
    c, _ = _coordinator(store, full_every=10)
    c.fold([_push(store, _params(1), 0)], local_steps=10)  # v1 full snapshot
    corrupt_chunk(store.url, store.record(1).object, "w")
    _, good, skipped = store.read_valid()
    assert good.version == 0 and skipped == [1]


def test_building_past_a_corrupted_newest_version(store, corrupt_chunk):
    c, p0 = _coordinator(store, full_every=10)
    c.fold([_push(store, _params(1), 0)], local_steps=10)  # v1, full snapshot
    corrupt_chunk(store.url, store.record(1).object, "w")
    params, good, skipped = ParamStore(store.url).read_valid()
    fresh = Coordinator(store, c.spec)
    fresh.start(params, good.version, skip_to=max(skipped))
    stats = fresh.fold([_push(store, _params(2), 0)], local_steps=10)
    assert stats.version == 2  # never version 1 again: that commit stays as it was
    rec2 = store.record(2)
    assert rec2.parent == 0
    got, _ = ParamStore(store.url).read(2)
    np.testing.assert_allclose(got["b"], p0["b"] + _params(2)["b"], rtol=1e-5, atol=1e-6)

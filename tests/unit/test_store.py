from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from cluster_app.errors import CommitConflict, CorruptData, StoreError, VersionNotFound
from cluster_app.sync.store import ParamStore
from cluster_app.sync.tree import flatten, unflatten


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "blocks/0/w": rng.normal(size=(64, 32)).astype(np.float32),
        "blocks/0/b": rng.normal(size=(32,)).astype(np.float32),
        "head": rng.normal(size=(32, 10)).astype(np.float32),
    }


def test_tree_round_trip():
    nested = {"a": {"b": np.ones(2), "c": {"d": np.zeros(3)}}, "e": np.arange(4)}
    flat = flatten(nested)
    assert list(flat) == ["a/b", "a/c/d", "e"]
    back = unflatten(flat)
    np.testing.assert_array_equal(back["a"]["c"]["d"], nested["a"]["c"]["d"])


def test_commit_and_read_round_trip(store_url):
    store = ParamStore(store_url)
    assert store.latest() is None
    p0, p1 = _params(0), _params(1)
    store.commit_full(p0, version=0, meta={"note": "init"})
    store.commit_full(p1, version=1, parent=0)
    assert store.versions() == [0, 1]
    got, rec = store.read()
    assert rec.version == 1 and rec.parent == 0
    for k in p1:
        np.testing.assert_array_equal(got[k], p1[k])
    got0, rec0 = store.read(0)
    assert rec0.meta == {"note": "init"}
    np.testing.assert_array_equal(got0["head"], p0["head"])


def test_second_commit_of_a_version_conflicts(store_url):
    store = ParamStore(store_url)
    store.commit_full(_params(0), version=0)
    with pytest.raises(CommitConflict):
        store.commit_full(_params(1), version=0)
    np.testing.assert_array_equal(store.read(0)[0]["head"], _params(0)["head"])


def test_concurrent_writers_exactly_one_wins(store_url):
    # two store handles per thread pair, no early-exit help: the link decides
    n = 8
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def writer(i):
        store = ParamStore(store_url)
        barrier.wait()
        try:
            store.commit_full(_params(i), version=5)
            outcomes[i] = "won"
        except CommitConflict:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1 and outcomes.count("lost") == n - 1
    winner = outcomes.index("won")
    got, _ = ParamStore(store_url).read(5)
    np.testing.assert_array_equal(got["head"], _params(winner)["head"])


def test_uncommitted_object_is_invisible(store_url):
    store = ParamStore(store_url)
    store.put_object(_params(0), kind="delta")  # a writer that died before its commit
    assert store.latest() is None
    with pytest.raises(VersionNotFound, match="no version is committed"):
        store.read()


def test_corrupted_chunk_is_detected(store_url, corrupt_chunk):
    store = ParamStore(store_url)
    rec = store.commit_full(_params(0), version=0)
    corrupt_chunk(store_url, rec.object, "head")  # one flipped byte
    with pytest.raises(CorruptData, match="failed to decode"):
        store.read(0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused(store_url, bad):
    store = ParamStore(store_url)
    params = _params(0)
    params["head"][3, 3] = bad
    with pytest.raises(CorruptData, match="leaf 'head' contains NaN or Inf"):
        store.commit_full(params, version=0)
    assert store.latest() is None


def test_missing_version_and_committed_objects_are_protected(store_url):
    store = ParamStore(store_url)
    rec = store.commit_full(_params(0), version=0)
    with pytest.raises(VersionNotFound, match="version 3 is not committed"):
        store.read(3)
    with pytest.raises(StoreError, match="immutable"):
        store.delete_object(rec.object)
    name = store.put_object(_params(1))
    store.delete_object(name)
    with pytest.raises(StoreError, match="missing"):
        store.get_object(name)


def _delta_chain(store, codec="int8"):
    """Versions 0 (full) -> 1 -> 2 (int8 deltas with digests, as the coordinator writes them)."""
    from cluster_app.sync.codecs import get_codec
    from cluster_app.sync.tree import digest

    c = get_codec(codec)
    params = _params(0)
    store.commit_full(params, version=0)
    for v in (1, 2):
        step = {k: c.encode(0.01 * _params(v)[k])[0] for k in params}
        params = {k: params[k] + c.decode(step[k]) for k in params}
        store.commit_delta(step, version=v, parent=v - 1, codec=codec, params_digest=digest(params))
    return params


def test_fresh_parameters_with_the_versions_digest_are_not_read(store_url, record_nbytes):
    store = ParamStore(store_url)
    store.commit_full(_params(0), version=0)
    reader = ParamStore(store_url)
    got, rec = reader.read(0, have=(None, _params(0)))
    # only the commit record (for its digest), none of the parameters
    assert rec.version == 0 and reader.bytes_read == record_nbytes(store_url, 0)
    np.testing.assert_array_equal(got["head"], _params(0)["head"])
    # different fresh parameters (another seed) are read from the store instead
    got, _ = ParamStore(store_url).read(0, have=(None, _params(7)))
    np.testing.assert_array_equal(got["head"], _params(0)["head"])


def test_a_chain_that_decodes_to_other_parameters_is_detected(store_url):
    # every chunk checksum passes, but version 2 points at the wrong (valid) delta object:
    # only the end-to-end digest can tell
    import json

    store = ParamStore(store_url)
    _delta_chain(store)
    path = Path(store_url) / "commits" / f"{2:012d}.json"
    rec2, rec1 = json.loads(path.read_text()), store.record(1)
    path.write_text(json.dumps({**rec2, "object": rec1.object}))
    with pytest.raises(CorruptData, match="do not match the commit's digest"):
        ParamStore(store_url).read(2)
    _, rec, skipped = ParamStore(store_url).read_valid()
    assert rec.version == 1 and skipped == [2]


def test_a_wrong_held_copy_is_replaced_by_a_clean_read(store_url):
    store = ParamStore(store_url)
    final = _delta_chain(store)
    p1, _ = ParamStore(store_url).read(1)
    p1["head"][0, 0] += 1.0  # the caller's copy of version 1 was damaged after it was read
    reader = ParamStore(store_url)
    got, _ = reader.read(2, have=(1, p1))
    np.testing.assert_array_equal(got["head"], final["head"])


def _snapshot_with_delta(store, codec="int4"):
    """Versions 0 (full) -> 1 (full snapshot carrying its int4 delta from 0), as the
    coordinator commits its periodic snapshots."""
    from cluster_app.sync.codecs import get_codec

    c = get_codec(codec)
    p0 = _params(0)
    store.commit_full(p0, version=0)
    step = {k: c.encode(0.01 * _params(1)[k])[0] for k in p0}
    p1 = {k: p0[k] + c.decode(step[k]) for k in p0}
    rec = store.commit_full(p1, version=1, parent=0, delta=step, delta_codec=codec)
    return p0, p1, rec


def test_a_snapshot_is_reached_through_its_delta_by_a_holder_of_the_parent(
    store_url, record_nbytes
):
    p0, p1, rec = _snapshot_with_delta(ParamStore(store_url))
    assert rec.kind == "full" and rec.delta["codec"] == "int4"
    assert rec.written == rec.nbytes + rec.delta["nbytes"]
    assert rec.delta["nbytes"] < rec.nbytes / 2  # int4 codes (and metadata) vs float32

    holder = ParamStore(store_url)
    got, top = holder.read(1, have=(0, p0))
    assert top.version == 1 and top.kind == "full"
    record = record_nbytes(store_url, 1)
    assert holder.bytes_read == rec.delta["nbytes"] + record  # the delta, not the snapshot
    for k in p1:
        np.testing.assert_array_equal(got[k], p1[k])  # bit for bit (the digest checked it)

    newcomer = ParamStore(store_url)  # holds nothing: reads the snapshot itself
    got, _ = newcomer.read(1)
    assert newcomer.bytes_read == rec.nbytes + record
    np.testing.assert_array_equal(got["head"], p1["head"])


def test_a_damaged_snapshot_delta_falls_back_to_the_snapshot(
    store_url, caplog, record_nbytes, corrupt_chunk
):
    p0, p1, rec = _snapshot_with_delta(ParamStore(store_url))
    corrupt_chunk(store_url, rec.delta["object"], "_packed")
    reader = ParamStore(store_url)
    got, _ = reader.read(1, have=(0, p0))
    np.testing.assert_array_equal(got["head"], p1["head"])
    assert "re-reading without held versions" in caplog.text
    # the snapshot after the failed delta; the record is read once per attempt
    assert reader.bytes_read == rec.nbytes + 2 * record_nbytes(store_url, 1)


def test_only_a_full_snapshot_with_a_parent_carries_a_delta(store_url):
    store = ParamStore(store_url)
    with pytest.raises(StoreError, match="only a full snapshot with a parent"):
        store.commit_full(_params(0), version=0, delta=_params(1))
    assert store.latest() is None


def test_a_deltas_leaves_share_one_packed_array_read_back_chunk_by_chunk(store_url):
    import zarr

    from cluster_app.sync.codecs import get_codec

    c = get_codec("int4")
    rng = np.random.default_rng(0)
    tree = {
        "w": rng.normal(size=(128, 64)).astype(np.float32),
        "b": rng.normal(size=(64,)).astype(np.float32),
        "ln/scale": rng.normal(size=(33,)).astype(np.float32),  # odd: a half-filled byte
        "ln/bias": np.zeros(64, np.float32),
        "v": rng.normal(size=(3000,)).astype(np.float32),
    }
    enc = {k: c.encode(v)[0] for k, v in tree.items()}
    # 1000-byte chunks: chunks span leaves, and leaves span chunks
    store = ParamStore(store_url, chunk_elems=1000)
    name = store.put_object(enc, codec="int4")
    group = zarr.open_group(f"{store_url}/objects/{name}", mode="r")
    assert {p for p, _ in group.arrays()} == {"_packed", "_scales"}  # and no nested groups
    assert {p for p, _ in group.groups()} == set()
    packed = group["_packed"]
    assert packed.chunks[0] <= 1000 and packed.nchunks > 1
    slices = group.attrs["packed"]
    assert set(slices) == set(tree)
    for k in tree:  # plain zarr finds each leaf's codes at its recorded slice
        np.testing.assert_array_equal(packed[slice(*slices[k])], enc[k].q)
    got = store.get_object(name)
    for k, v in tree.items():
        np.testing.assert_array_equal(got[k], c.decode(enc[k]))
        assert got[k].shape == v.shape

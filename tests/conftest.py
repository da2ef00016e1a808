from __future__ import annotations

import os

import dask
import pytest

# register cluster_app's config defaults before distributed.utils_test snapshots the config
# (its gen_cluster resets the global config to that snapshot after every test)
import cluster_app.config  # noqa: F401

# worker processes and in-process workers alike: CPU JAX, one XLA thread per agent
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


@pytest.fixture(autouse=True)
def _quiet_cluster_config():
    # random dashboard ports so parallel or leftover clusters never collide
    with dask.config.set({"cluster-app.cluster.dashboard-address": ":0"}):
        yield


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

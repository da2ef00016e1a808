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

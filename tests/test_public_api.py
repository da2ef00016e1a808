from __future__ import annotations

import subprocess
import sys

import cluster_app

EXPECTED = {
    "Agent",
    "AgentCluster",
    "AgentPlugin",
    "AgentSpec",
    "ClusterAppError",
    "Commit",
    "CommitConflict",
    "ConfigError",
    "CorruptData",
    "ContinualSpec",
    "Task",
    "ParamStore",
    "PlacementSettings",
    "RoundRecord",
    "RunError",
    "RunHandle",
    "RunLoop",
    "RunSpec",
    "SpecError",
    "StoreError",
    "SyncSpec",
    "TrainResult",
    "VersionNotFound",
    "EvalSpec",
    "Gate",
    "GateRefused",
    "InvalidRefName",
    "MergeConflict",
    "RefConflict",
    "RefNotFound",
    "Registry",
    "Revision",
    "Versions",
    "__version__",
    "config",
}


def test_all_is_curated_and_importable():
    assert set(cluster_app.__all__) == EXPECTED
    for name in cluster_app.__all__:
        assert getattr(cluster_app, name) is not None


def test_errors_form_one_tree():
    for name in (
        "CommitConflict",
        "ConfigError",
        "CorruptData",
        "GateRefused",
        "InvalidRefName",
        "MergeConflict",
        "RefConflict",
        "RefNotFound",
        "RunError",
        "SpecError",
        "StoreError",
        "VersionNotFound",
    ):
        assert issubclass(getattr(cluster_app, name), cluster_app.ClusterAppError)
    assert issubclass(cluster_app.ConfigError, ValueError)
    assert issubclass(cluster_app.SpecError, ValueError)
    assert issubclass(cluster_app.InvalidRefName, ValueError)
    assert issubclass(cluster_app.RefConflict, cluster_app.CommitConflict)
    assert issubclass(cluster_app.RefNotFound, KeyError)


def test_client_side_import_does_not_load_jax():
    code = (
        "import sys, cluster_app, cluster_app.cluster, cluster_app.runs;print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_scheduler_side_import_loads_no_jax_zarr_or_orbax():
    # what a scheduler preload of the placement plugin imports: the top-level package is lazy
    code = (
        "import sys, cluster_app.placement;"
        "print([m for m in ('jax', 'zarr', 'orbax', 'optax') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_listed_and_lazy():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, cluster_app; print('distributed' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"  # importing the package imports nothing heavy
    assert set(dir(cluster_app)) >= set(cluster_app.__all__)

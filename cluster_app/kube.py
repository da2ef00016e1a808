"""Kubernetes specs for a fleet: a ``DaskCluster`` and a ``DaskAutoscaler`` for the dask-kubernetes
operator, built by pure functions (no Kubernetes API, no network, nothing started).

:func:`cluster_spec` starts from the operator's own ``make_cluster_spec`` and adds what a fleet
needs:

- **scheduler**: ``dask scheduler`` with our preloads: ``cluster_app.observe.preload`` (the
  dashboard page ``/cluster-app`` and the :class:`~cluster_app.observe.monitor.FleetMonitor`,
  so the page and the ``cluster_app_*`` series exist before any client connects),
  ``cluster_app.scaling.preload`` (our adaptive target, from the autoscaler's first poll) and
  ``cluster_app.runs.keeper`` (a restarted scheduler pod brings its durable runs back). Its HTTP
  routes are Dask's defaults plus ``distributed.http.scheduler.api``, the
  ``/api/v1/adaptive_target`` and ``/api/v1/retire_workers`` the operator's autoscaler calls
  (``distributed.scheduler.http.routes`` replaces the default list, so the defaults are read
  from ``dask.config`` when the spec is built and kept);
- **workers**: the agent image as ``dask worker --nthreads 1`` (one agent per worker), resource
  requests, the environment :func:`cluster_app.cluster.worker_env` gives local workers, with
  JAX's persistent compilation cache on a shared volume (a program one worker compiled, every
  worker that joins later loads), and the parameter store: a shared volume
  (:class:`PVCStore`) or S3 with its settings from a Secret (:class:`S3Store`);
- **GPU** (the vertical knob, :class:`GPU`): ``nvidia.com/gpu`` requests and limits and
  ``XLA_PYTHON_CLIENT_MEM_FRACTION`` from one value each, and ``JAX_PLATFORMS=cuda``.

The DaskCluster and DaskAutoscaler in ``k8s/base/cluster.yaml`` are this module's output::

    python -m cluster_app.kube > k8s/base/cluster.yaml

and ``tests/unit/test_kube_specs.py`` fails if the file and the builders drift apart;
``tests/e2e/test_k8s_manifests.py`` checks the kustomize overlays against them (the gpu overlay
against ``gpu=``, the s3-store component against ``store=S3Store(...)``).
:meth:`cluster_app.AgentCluster.kubernetes` passes :func:`cluster_spec`'s output to the
operator's ``KubeCluster``.

``dask-scheduler`` and ``dask-worker`` (the operator's default commands) are no longer
installed by distributed; the specs run ``dask scheduler`` and ``dask worker``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.config
import yaml

from cluster_app import config
from cluster_app.errors import SpecError

__all__ = [
    "API_ROUTE",
    "CACHE_CLAIM",
    "CACHE_PATH",
    "GPU",
    "IMAGE",
    "NAME",
    "S3_SECRET",
    "SCHEDULER_PRELOADS",
    "STORE_CLAIM",
    "STORE_PATH",
    "PVCStore",
    "S3Store",
    "agent_env",
    "autoscaler_spec",
    "cluster_spec",
    "http_routes",
    "manifests",
    "render",
    "store_url",
]

NAME = "cluster-app"
IMAGE = "cluster-app:0.1.0"
STORE_CLAIM = "cluster-app-store"
STORE_PATH = "/var/lib/cluster-app/store"
CACHE_CLAIM = "cluster-app-jax-cache"
CACHE_PATH = "/var/lib/cluster-app/jax-cache"
S3_SECRET = "cluster-app-s3"
API_ROUTE = "distributed.http.scheduler.api"
SCHEDULER_PRELOADS = (
    "cluster_app.observe.preload",
    "cluster_app.scaling.preload",
    "cluster_app.runs.keeper",
)
UID = 1000  # the image's user (Dockerfile); fsGroup makes the shared volumes writable for it
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": NAME}

WORKER_RESOURCES: dict[str, dict[str, Any]] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "2Gi"},  # no CPU limit: throttling only slows the agent's steps
}
SCHEDULER_RESOURCES: dict[str, dict[str, Any]] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "4Gi"},
}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class PVCStore:
    """The parameter store (and the runs' Orbax checkpoints) on a ReadWriteMany volume."""

    claim: str = STORE_CLAIM
    path: str = STORE_PATH


@dataclass(frozen=True)
class S3Store:
    """The parameter store on S3 (or any S3-compatible service).

    The Secret ``secret`` supplies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, for a
    service other than AWS, ``AWS_ENDPOINT_URL`` (read by s3fs/botocore) to every pod through
    ``envFrom``. Orbax writes checkpoints to local paths, so they still go on the shared volume
    ``claim`` (``cluster-app.recovery.checkpoint-dir``): a run's controller may resume on
    another worker.
    """

    url: str
    secret: str = S3_SECRET
    claim: str = STORE_CLAIM
    path: str = STORE_PATH

    def __post_init__(self) -> None:
        if not self.url.startswith("s3://"):
            raise SpecError(f"S3Store url={self.url!r} must start with s3://")

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.path.rstrip('/')}/checkpoints"


@dataclass(frozen=True)
class GPU:
    """GPUs per worker (``nvidia.com/gpu`` requests = limits) and the share of each GPU's
    memory JAX preallocates (``XLA_PYTHON_CLIENT_MEM_FRACTION``; JAX's default is 0.75)."""

    count: int = 1
    mem_fraction: float = 0.9

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise SpecError(f"gpu count={self.count!r} must be a positive integer")
        if not 0.0 < float(self.mem_fraction) <= 1.0:
            raise SpecError(f"gpu mem_fraction={self.mem_fraction!r} must be in (0, 1]")

    @classmethod
    def of(cls, value: GPU | Mapping[str, Any] | int | None) -> GPU | None:
        """``None``, a :class:`GPU`, a mapping ``{"count": 1, "mem_fraction": 0.9}`` or a count."""
        if value is None or isinstance(value, GPU):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(count=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"count", "mem_fraction"}
            if unknown:
                raise SpecError(f"gpu: unknown keys {sorted(unknown)} (count, mem_fraction)")
            return cls(**value)
        raise SpecError(f"gpu={value!r}: None, a count, {{count, mem_fraction}} or GPU(...)")


def store_url(store: PVCStore | S3Store | None = None) -> str:
    """The parameter store's URL as the pods see it (``store.url`` for their clients)."""
    store = PVCStore() if store is None else store
    return store.url if isinstance(store, S3Store) else store.path


def _env_list(env: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in env.items()]


def _set_env(env: list[dict[str, str]], name: str, value: str) -> None:
    """Set ``name`` in place (keeps its position) or append it."""
    for item in env:
        if item["name"] == name:
            item["value"] = value
            return
    env.append({"name": name, "value": value})


def http_routes() -> list[str]:
    """The scheduler's HTTP routes: this Dask's configured list, plus the API route."""
    import distributed  # noqa: F401  (registers distributed's config defaults)

    routes = list(dask.config.get("distributed.scheduler.http.routes"))
    return routes if API_ROUTE in routes else [*routes, API_ROUTE]


def agent_env(cache_path: str = CACHE_PATH) -> dict[str, str]:
    """A worker's environment: :func:`cluster_app.cluster.worker_env` with the compilation
    cache at ``cache_path`` (the shared volume), and the same path as our config."""
    from cluster_app.cluster import worker_env

    with dask.config.set({"cluster-app.cluster.compilation-cache": cache_path}):
        env = worker_env()
    env["DASK_CLUSTER_APP__CLUSTER__COMPILATION_CACHE"] = cache_path
    return env


def _resources(value: Mapping[str, Any] | None, default: Mapping[str, Any]) -> dict[str, Any]:
    res = copy.deepcopy(dict(value if value is not None else default))
    unknown = set(res) - {"requests", "limits"}
    if unknown:
        raise SpecError(f"resources: unknown keys {sorted(unknown)} (requests, limits)")
    return res


def cluster_spec(
    name: str = NAME,
    image: str = IMAGE,
    n_workers: int = 2,
    resources: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    *,
    store: PVCStore | S3Store | None = None,
    gpu: GPU | Mapping[str, Any] | int | None = None,
    cache_claim: str = CACHE_CLAIM,
    scheduler_resources: Mapping[str, Any] | None = None,
    keeper: bool = True,
) -> dict[str, Any]:
    """A ``DaskCluster`` (``kubernetes.dask.org/v1``) of ``n_workers`` agent workers.

    Parameters
    ----------
    name : str
        The DaskCluster's name: the scheduler's Service is ``<name>-scheduler``, the worker
        group the operator autoscales is ``<name>-default``.
    image : str
        The agent image (``Dockerfile``) for the scheduler and the workers.
    n_workers : int
        Workers to start with (a DaskAutoscaler then follows the scheduler's target).
    resources : dict, optional
        Each worker container's ``{"requests": ..., "limits": ...}`` (default: 1 CPU, 2Gi).
    env : dict, optional
        More environment for the scheduler and the workers (wins over ours).
    store : PVCStore or S3Store, optional
        Where the parameter store lives (default ``PVCStore()``: the claim ``cluster-app-store``).
    gpu : GPU, dict or int, optional
        ``{"count": 1, "mem_fraction": 0.9}``: GPUs per worker and the share of their memory JAX
        takes. None (default): CPU workers.
    cache_claim : str
        The ReadWriteMany claim that holds JAX's persistent compilation cache.
    scheduler_resources : dict, optional
        The scheduler container's resources (default: 1 CPU, 2Gi requested, 4Gi limit).
    keeper : bool
        Preload :mod:`cluster_app.runs.keeper` on the scheduler (durable runs survive a
        scheduler restart).
    """
    from dask_kubernetes.operator import make_cluster_spec

    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 0:
        raise SpecError(f"n_workers={n_workers!r} must be a non-negative integer")
    store = PVCStore() if store is None else store
    if not isinstance(store, (PVCStore, S3Store)):
        raise SpecError(f"store={store!r}: PVCStore(...) or S3Store(url=...)")
    gpu_ = GPU.of(gpu)
    threads = config.get("cluster.threads-per-worker")

    common = {"DASK_CLUSTER_APP__STORE__URL": store_url(store)}
    if isinstance(store, S3Store):
        common["DASK_CLUSTER_APP__RECOVERY__CHECKPOINT_DIR"] = store.checkpoint_dir
    worker_env = _env_list({**agent_env(), **common})
    worker_res = _resources(resources, WORKER_RESOURCES)
    if gpu_ is not None:
        _set_env(worker_env, "JAX_PLATFORMS", "cuda")
        _set_env(worker_env, "XLA_PYTHON_CLIENT_MEM_FRACTION", f"{gpu_.mem_fraction:g}")
        for kind in ("requests", "limits"):
            worker_res.setdefault(kind, {})[GPU_RESOURCE] = str(gpu_.count)  # the CRD: strings
    for k, v in (env or {}).items():
        _set_env(worker_env, k, str(v))

    spec = make_cluster_spec(
        name=name,
        image=image,
        n_workers=n_workers,
        resources=worker_res,
        env=worker_env,
        worker_command=f"dask worker --nthreads {threads}",
    )

    # ---- the scheduler: our preloads, the API route, the store (the keeper lists it)
    scheduler_env = _env_list(
        {
            "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": json.dumps(http_routes()),
            # agents are meant to survive killed workers (as AgentCluster sets for LocalCluster)
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "50",
            **common,
        }
    )
    for k, v in (env or {}).items():
        _set_env(scheduler_env, k, str(v))
    modules = SCHEDULER_PRELOADS if keeper else SCHEDULER_PRELOADS[:1]
    preloads = [arg for m in modules for arg in ("--preload", m)]
    sched = spec["spec"]["scheduler"]
    container = sched["spec"]["containers"][0]
    container["args"] = ["dask", "scheduler", "--host", "0.0.0.0", *preloads]
    container["env"] = scheduler_env
    container["resources"] = _resources(scheduler_resources, SCHEDULER_RESOURCES)

    # ---- volumes, envFrom, pod settings (fresh dicts for each pod: no YAML aliases)
    def store_mount() -> dict[str, Any]:
        return {"name": "store", "mountPath": store.path}

    def store_volume() -> dict[str, Any]:
        return {"name": "store", "persistentVolumeClaim": {"claimName": store.claim}}

    cache_mount = {"name": "jax-cache", "mountPath": CACHE_PATH}
    cache_volume = {"name": "jax-cache", "persistentVolumeClaim": {"claimName": cache_claim}}
    pods = {
        "scheduler": ([store_mount()], [store_volume()]),
        "worker": ([store_mount(), cache_mount], [store_volume(), cache_volume]),
    }
    for component, (mounts, volumes) in pods.items():
        part = spec["spec"][component]
        pod = part["spec"]
        c = pod["containers"][0]
        c["volumeMounts"] = mounts
        if isinstance(store, S3Store):
            c["envFrom"] = [{"secretRef": {"name": store.secret}}]
        pod["volumes"] = volumes
        pod["securityContext"] = {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
        }
        if component == "worker":
            # a retiring worker flushes its pending delta pushes (AgentPlugin.teardown)
            pod["terminationGracePeriodSeconds"] = 60
            if gpu_ is not None:  # GPU nodes are usually tainted so that only GPU pods land
                pod["tolerations"] = [dict(GPU_TOLERATION)]
        meta = {"labels": {**LABELS, "app.kubernetes.io/component": component}}
        spec["spec"][component] = {"metadata": meta, **part}  # metadata first, for reading
    spec["metadata"]["labels"] = dict(LABELS)
    return spec


def autoscaler_spec(
    name: str = NAME, minimum: int | None = None, maximum: int | None = None
) -> dict[str, Any]:
    """A ``DaskAutoscaler`` for the DaskCluster ``name``: the operator asks the scheduler's
    adaptive target (our :class:`~cluster_app.scaling.plugin.ScalingPlugin`) every 5 s and
    scales ``<name>-default`` within ``[minimum, maximum]`` (default
    ``cluster-app.scaling.minimum`` / ``.maximum``)."""
    lo = config.get("scaling.minimum", minimum)
    hi = config.get("scaling.maximum", maximum)
    if lo > hi:
        raise SpecError(f"autoscaler minimum={lo} > maximum={hi}")
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {
            "name": name,
            "labels": {**LABELS, "dask.org/cluster-name": name, "dask.org/component": "autoscaler"},
        },
        "spec": {"cluster": name, "minimum": lo, "maximum": hi},
    }


def manifests(
    name: str = NAME,
    image: str = IMAGE,
    n_workers: int = 2,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """The DaskCluster and its DaskAutoscaler; ``options`` go to :func:`cluster_spec`."""
    return [
        cluster_spec(name, image, n_workers, **options),
        autoscaler_spec(name, minimum, maximum),
    ]


def render(docs: Sequence[Mapping[str, Any]], command: str = "python -m cluster_app.kube") -> str:
    """YAML documents with a header naming the command that generated them."""
    head = (
        f"# Generated by `{command}` (cluster_app/kube.py): edit the builders, not this file.\n"
        "# tests/unit/test_kube_specs.py fails if the two drift apart.\n"
    )
    body = yaml.safe_dump_all(
        [dict(d) for d in docs], sort_keys=False, default_flow_style=False, width=100
    )
    return head + body


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cluster_app.kube [options]``: print the DaskCluster and DaskAutoscaler."""
    p = argparse.ArgumentParser(prog="python -m cluster_app.kube", description=main.__doc__)
    p.add_argument("--name", default=NAME)
    p.add_argument("--image", default=IMAGE)
    p.add_argument("--workers", type=int, default=2, help="workers to start with")
    p.add_argument("--minimum", type=int, default=None, help="autoscaler minimum")
    p.add_argument("--maximum", type=int, default=None, help="autoscaler maximum")
    p.add_argument("--gpus", type=int, default=None, help="nvidia.com/gpu per worker")
    p.add_argument("--gpu-mem-fraction", type=float, default=0.9)
    p.add_argument("--s3-url", default=None, help="the store on S3: s3://bucket/prefix")
    p.add_argument("--s3-secret", default=S3_SECRET)
    args = p.parse_args(argv)
    try:
        gpu = GPU(args.gpus, args.gpu_mem_fraction) if args.gpus else None
        store = S3Store(args.s3_url, secret=args.s3_secret) if args.s3_url else None
        docs = manifests(
            args.name,
            args.image,
            args.workers,
            minimum=args.minimum,
            maximum=args.maximum,
            gpu=gpu,
            store=store,
        )
    except SpecError as e:
        p.error(str(e))
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["python -m cluster_app.kube", *map(shlex.quote, given)])
    sys.stdout.write(render(docs, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

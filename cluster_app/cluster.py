"""``AgentCluster``: the composition root that wires a Dask cluster, the agent plugin and runs.

With no address it starts a ``LocalCluster`` sized for the machine (one single-threaded worker
process per agent); with an address it connects to an existing scheduler. Either way it
installs our plugins (:func:`~cluster_app.runs.install.install`): the agent plugin, so every
worker, including those that join later, holds an agent, and (unless
``cluster-app.placement.enabled`` is false) the scoring placement plugin
(:mod:`cluster_app.placement`), which places every ``agent-*`` task.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import agent_complete
from cluster_app.errors import RunError, SpecError
from cluster_app.runs.agents import workers_info
from cluster_app.runs.handle import RunHandle
from cluster_app.runs.install import install
from cluster_app.runs.loop import RunLoop
from cluster_app.runs.spec import AGENT_FIELDS, RoundRecord, RunSpec, TrainResult
from cluster_app.runs.versions import FleetEvaluator, Versions
from cluster_app.serving.gateway import Gateway
from cluster_app.serving.server import ServingHandle
from cluster_app.serving.spec import ServeSpec

__all__ = ["AgentCluster", "default_n_workers", "worker_env"]


def default_n_workers() -> int:
    """``cluster-app.cluster.n-workers`` if set, else one per core (at least 2, at most 8)."""
    n = config.get("cluster.n-workers")
    return n if n is not None else max(2, min(os.cpu_count() or 2, 8))


def worker_env() -> dict[str, str]:
    """Environment for worker processes: one XLA thread per single-threaded agent, CPU JAX,
    and JAX's persistent compilation cache (``cluster-app.cluster.compilation-cache``) with no
    minimum compile time: a program one worker compiled, every other worker loads (~5x faster
    here), small programs included."""
    env = {
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    cache = config.get("cluster.compilation-cache")
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.expanduser(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


class AgentCluster:
    """A fleet of JAX agents on a Dask cluster.

    Parameters
    ----------
    address : str, optional
        Scheduler address of an existing cluster. If omitted a ``LocalCluster`` is started.
    n_workers : int, optional
        Workers of the local cluster (default :func:`default_n_workers`).
    agent : AgentSpec, optional
        The agent every worker builds at start-up (default from config).
    store_url : str, optional
        Root of the parameter store (default ``cluster-app.store.url``).
    quiet : bool
        Do not print the dashboard link.
    **cluster_kwargs
        Passed to ``LocalCluster``.

    Examples
    --------
    >>> with AgentCluster(n_workers=2) as ac:                  # doctest: +SKIP
    ...     result = ac.train(rounds=5, local_steps=20)
    ...     print(ac.complete("def __init__(self"))
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        agent: AgentSpec | None = None,
        store_url: str | None = None,
        quiet: bool = False,
        **cluster_kwargs: Any,
    ) -> None:
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
            raise SpecError(f"n_workers={n_workers!r} must be a positive integer")
        if address is not None and (n_workers is not None or cluster_kwargs):
            raise SpecError("pass either address= (connect) or local-cluster options, not both")
        self.agent = agent or AgentSpec.from_config()
        self.store_url = config.get("store.url", store_url)
        self.cluster: LocalCluster | None = None
        if address is None:
            kwargs = {
                "n_workers": n_workers or default_n_workers(),
                "threads_per_worker": config.get("cluster.threads-per-worker"),
                "memory_limit": config.get("cluster.memory-limit"),
                "dashboard_address": config.get("cluster.dashboard-address"),
                "processes": True,
                "env": worker_env(),
            }
            kwargs.update(cluster_kwargs)
            # the scheduler runs in this process: register our dashboard page before it starts
            import cluster_app.observe.dashboard  # noqa: F401

            # agents are meant to survive killed workers: a task that was running on a few
            # dead workers is not "suspicious" the way distributed's default of 3 assumes
            with dask.config.set({"distributed.scheduler.allowed-failures": 50}):
                self.cluster = LocalCluster(**kwargs)
            self.client = Client(self.cluster)
        else:
            self.client = Client(address)
        install(self.client, self.agent)  # agents on every worker, and scoring placement
        self.last_run: TrainResult | None = None
        self.serving: ServingHandle | None = None
        self._last_spec: RunSpec | None = None
        if not quiet:
            print(f"cluster_app: {len(self.workers)} agents, dashboard at {self.dashboard_link}")

    # ------------------------------------------------------------------ Kubernetes
    @staticmethod
    def kubernetes_spec(
        name: str = "cluster-app", *, image: str, n_workers: int = 2, **spec_options: Any
    ) -> dict:
        """The ``DaskCluster`` :meth:`kubernetes` creates (:func:`cluster_app.kube.cluster_spec`;
        ``spec_options``: ``resources``, ``env``, ``store``, ``gpu``, ...); starts nothing."""
        from cluster_app import kube

        return kube.cluster_spec(name, image, n_workers, **spec_options)

    @classmethod
    def kubernetes(
        cls,
        name: str = "cluster-app",
        *,
        image: str,
        n_workers: int = 2,
        namespace: str | None = None,
        adapt: tuple[int, int] | None = None,
        agent: AgentSpec | None = None,
        store_url: str | None = None,
        quiet: bool = False,
        kube_cluster_options: dict[str, Any] | None = None,
        **spec_options: Any,
    ) -> AgentCluster:
        """A fleet on Kubernetes: the dask-kubernetes operator's ``KubeCluster`` created from
        :meth:`kubernetes_spec`, then connected to like ``AgentCluster(address)``.

        ``adapt=(minimum, maximum)`` adds the operator's DaskAutoscaler, which follows our
        scheduler-side target. ``store_url`` defaults to the store as the pods see it (the
        store volume's path or the S3 URL). :meth:`scale` and :meth:`close` act on the
        KubeCluster (closing it deletes the DaskCluster it created). Needs the operator
        installed in the cluster and a kubeconfig; see ``docs/deploy-kubernetes.md``.
        """
        from dask_kubernetes.operator import KubeCluster

        from cluster_app import kube

        spec = cls.kubernetes_spec(name, image=image, n_workers=n_workers, **spec_options)
        kc = KubeCluster(
            custom_cluster_spec=spec,
            namespace=namespace,
            quiet=quiet,
            **(kube_cluster_options or {}),
        )
        try:
            if adapt is not None:
                kc.adapt(minimum=adapt[0], maximum=adapt[1])
            url = store_url or kube.store_url(spec_options.get("store"))
            ac = cls(kc.scheduler_address, agent=agent, store_url=url, quiet=quiet)
        except BaseException:
            kc.close()
            raise
        ac.cluster = kc  # type: ignore[assignment]  # scale() and close() are the same calls
        return ac

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> AgentCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, close the client and, if this object started it, the local cluster."""
        if self.serving is not None:
            self.serving.stop()
            self.serving = None
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's address (``/status``; our page is ``/cluster-app``)."""
        return self.client.dashboard_link

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address, for ``AgentCluster(address)`` in another process."""
        return self.client.scheduler_info()["address"]

    @property
    def workers(self) -> list[str]:
        """The addresses of the running workers (each holds an agent)."""
        return sorted(workers_info(self.client))

    def scale(self, n: int) -> None:
        """Resize the local cluster to ``n`` workers (new ones get an agent automatically)."""
        if self.cluster is None:
            raise RunError("scale() needs the local cluster; scale a remote cluster where it runs")
        self.cluster.scale(n)

    # ------------------------------------------------------------------ work
    def train(
        self,
        *,
        progress: bool | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        **overrides: Any,
    ) -> TrainResult:
        """Train in rounds; keyword arguments override ``cluster-app.train.*`` and agent fields.

        Examples: ``ac.train(rounds=10, local_steps=50, learning_rate=1e-3)``. ``progress``
        shows a bar over rounds (default ``cluster-app.train.progress``).
        """
        spec = self._run_spec(overrides)
        shown = bool(config.get("train.progress", progress))
        result = RunLoop(self.client, spec, on_round=on_round, progress=shown).run()
        self.last_run, self._last_spec = result, spec
        return result

    def submit(self, **overrides: Any) -> RunHandle:
        """Start a durable run on the cluster and return at once.

        The controller runs as a task on the cluster, so the run survives this client
        exiting; its worker dying (it resumes elsewhere from the newest valid checkpoint)
        and, with ``resume()``, a scheduler restart. Keywords as for :meth:`train`.
        """
        return RunHandle.submit(self.client, self._run_spec(overrides))

    def _run_spec(self, overrides: dict[str, Any]) -> RunSpec:
        """The run's spec: this cluster's agent (or ``agent=``) with the agent fields given
        (``seed=1``, ``learning_rate=...``, size dicts merged), then train and sync fields.
        Another ``model`` or ``dataset`` is another kind of agent: the configured defaults
        for that model, with the fields given."""
        overrides.setdefault("store_url", self.store_url)
        agent = overrides.pop("agent", None) or self.agent
        given = {k: overrides.pop(k) for k in list(overrides) if k in AGENT_FIELDS}
        fields = {k: v for k, v in given.items() if v is not None}  # None: not given
        if (
            fields.get("model", agent.model) != agent.model
            or fields.get("dataset", agent.dataset) != agent.dataset
        ):
            agent = AgentSpec.from_config(**fields)
        elif fields:
            for k in ("model_kwargs", "data_kwargs"):
                if k in fields:
                    fields[k] = {**getattr(agent, k), **fields[k]}
            agent = dataclasses.replace(agent, **fields)
        overrides["agent"] = agent
        return RunSpec.from_config(**overrides)

    @property
    def versions(self) -> Versions:
        """The model registry of this cluster's store; evaluations run on the fleet."""
        return Versions(
            self.store_url,
            evaluator=FleetEvaluator(self.client, self.store_url),
            client=self.client,
        )

    def serve(
        self, ref: str = "prod", *, port: int | None = None, batching: bool = True, **settings: Any
    ) -> ServingHandle:
        """Serve registry ref ``ref`` over HTTP (an OpenAI-compatible ``/v1/completions``)
        from this cluster's agents, in a background thread; ``settings`` override
        ``cluster-app.serving.*``. :meth:`complete` then goes through it too."""
        if self.serving is not None:
            raise RunError(f"already serving at {self.serving.url}; stop() it first")
        spec = ServeSpec.from_config(**settings)
        address = self.scheduler_address
        gateway = Gateway(address, self.store_url, ref, spec, batching=batching)
        self.serving = ServingHandle(gateway, port=port)
        return self.serving

    def attach(self, run_id: str) -> RunHandle:
        """A handle on an existing run in this cluster's store, by id."""
        return RunHandle(self.client, f"{self.store_url.rstrip('/')}/{run_id}")

    def complete(self, prompt: str, n_chars: int = 40, temperature: float = 0.0) -> str:
        """Complete ``prompt``: through the gateway when :meth:`serve` is on (the served
        split), else with the newest version of the last run's code model."""
        if self.serving is not None:
            return self.serving.complete(prompt, n_chars, temperature)
        if self.last_run is None or self._last_spec is None:
            raise RunError("no model trained yet: call train() first")
        spec = self._last_spec
        fut = self.client.submit(
            agent_complete,
            spec.agent,
            spec.run_url,
            self.last_run.version,
            prompt,
            n_chars,
            temperature,
            pure=False,
        )
        return fut.result()

    predict = complete

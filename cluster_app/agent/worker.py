"""The Dask side of an agent: a ``WorkerPlugin`` that holds one :class:`Agent` per worker.

The plugin is registered once with ``client.register_plugin``; Dask runs ``setup`` on every
current worker and on every worker that joins later, so each gets its agent automatically.
``setup`` builds and compiles the agent in a thread so the worker's event loop keeps answering
heartbeats. The task functions below (``agent_round``, ``agent_eval``, ...) are what the run
controller submits; they find the agent through ``get_worker().plugins``.

The agent's counters reach the scheduler through ``worker.metrics`` (keys ``cluster_app_*``),
carried by heartbeats into ``WorkerState.metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, cast

import numpy as np
from distributed import WorkerPlugin, get_worker

from cluster_app.agent import startup
from cluster_app.agent.messages import RoundResult
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import CommitConflict, RunError, SpecError
from cluster_app.learning import consolidation
from cluster_app.learning.memory import Consolidation
from cluster_app.learning.spec import RoundPlan
from cluster_app.observe import events
from cluster_app.sync.push import Push
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore
from cluster_app.versions.gate import EvalSpec
from cluster_app.versions.registry import Registry

if TYPE_CHECKING:
    from cluster_app.agent.agent import Agent

__all__ = [
    "PLUGIN_NAME",
    "AgentPlugin",
    "agent_complete",
    "agent_eval",
    "agent_evaluate",
    "agent_init",
    "agent_round",
    "agent_score",
    "agent_serve",
    "agent_serve_warm",
    "agent_warm",
    "get_agent",
]

logger = logging.getLogger(__name__)
PLUGIN_NAME = "cluster-app-agent"
# scheduler metadata under which each run publishes its newest version (``RunLoop``): a joining
# worker loads it before it reports ready; {run_id: {"url", "version", "phase", "agent"}}
CURRENT = ["cluster-app", "current"]


class AgentPlugin(WorkerPlugin):
    """Builds, prewarms and holds one :class:`Agent` on its worker."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, spec: AgentSpec | None = None, prewarm: bool = True) -> None:
        self.spec = spec or AgentSpec.from_config()
        self.prewarm = prewarm
        self.agent: Agent | None = None  # built in setup(), on the worker
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.stores: dict[str, ParamStore] = {}
        self._memory: tuple[tuple[str, int], Consolidation] | None = None
        # one background writer: pushes leave in order; chunk writes inside are AIMD-windowed
        self.pusher = ThreadPoolExecutor(1, thread_name_prefix="cluster-app-push")
        self.lock_pending = threading.Lock()
        self.pending = 0  # pushes submitted and not written yet (scale-down waits for none)
        self.setup_seconds = 0.0
        self.cold_start: dict = {}

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "prewarm": self.prewarm}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    async def setup(self, worker) -> None:
        # JAX compilation takes seconds: keep it off the worker's event loop
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._build)
        current = await self._current(worker)
        if current is not None:  # a run is going: hold its newest version before work comes
            await loop.run_in_executor(None, self._restore, *current)
        for key, fn in {
            "cluster_app_version": lambda w: self._metric("version"),
            "cluster_app_steps": lambda w: self._metric("steps"),
            "cluster_app_steps_per_s": lambda w: self._metric("steps_per_s"),
            "cluster_app_busy": lambda w: self._metric("busy"),
            events.PENDING_PUSHES: lambda w: self.pending,
        }.items():
            worker.metrics[key] = fn

    def teardown(self, worker) -> None:
        self.pusher.shutdown(wait=True)  # let an in-flight push finish and seal
        for key in [k for k in worker.metrics if k.startswith("cluster_app_")]:
            del worker.metrics[key]

    async def _current(self, worker) -> tuple[str, int] | None:
        """The newest version of the most recently active running run of this agent's kind,
        as published on the scheduler, or None."""
        if not self.prewarm:
            return None
        try:
            runs = await worker.scheduler.get_metadata(keys=CURRENT, default=None)
        except Exception:  # an older scheduler, or none reachable yet: start cold
            logger.debug("no current versions on the scheduler", exc_info=True)
            return None

        def plain(d):  # as it travelled: tuples are lists after msgpack
            return json.loads(json.dumps(d, default=list))

        mine = plain(asdict(self.spec))
        live = [
            r
            for r in (runs or {}).values()
            if isinstance(r, dict) and r.get("phase") == "running" and plain(r.get("agent")) == mine
        ]
        if not live:
            return None
        newest = max(live, key=lambda r: r.get("time", 0.0))
        return newest["url"], int(newest["version"])

    def _restore(self, url: str, version: int) -> None:
        """Load ``version`` of the run at ``url`` into the agent (the cold start's "version
        restore"); a failure leaves the agent as it was, to load in its first task."""
        t0 = time.perf_counter()
        try:
            agent = self.agent_for(self.spec)
            with agent.lock:
                pulled = _sync_to(agent, self.store(url), version)
        except Exception:
            logger.warning(
                "could not load version %s of %s at start-up", version, url, exc_info=True
            )
            return
        self.cold_start.update(
            restore_s=time.perf_counter() - t0,
            restored={"run": url, "version": version, "pull_bytes": pulled},
        )
        logger.info("agent holds version %d of %s before its first task", version, url)

    def _metric(self, key: str) -> float:
        return self.agent.metrics()[key] if self.agent is not None else -1

    def _build(self) -> None:
        started = time.time()
        t0 = time.perf_counter()
        try:
            from cluster_app.agent.agent import Agent  # JAX: only ever imported on workers

            startup.apply_jax_settings()
            t_import = time.perf_counter()
            cached = startup.cache_entries()
            with self.lock:
                self.agent = Agent(self.spec)
                t_build = time.perf_counter()
                if self.prewarm:
                    self.agent.prewarm()
            t_end = time.perf_counter()
            # where a worker's start went (benchmarks/cold_start.py): the process until our
            # setup, JAX's import, the agent's build, the step functions' compilation
            self.cold_start = {
                "process_to_setup_s": started - startup.process_start(),
                "import_s": t_import - t0,
                "build_s": t_build - t_import,
                "compile_s": t_end - t_build if self.prewarm else 0.0,
                "cache_entries_before": cached,
                "cache_entries_after": startup.cache_entries(),
            }
        finally:
            self.ready.set()  # tasks then rebuild (and raise) instead of waiting forever
        self.setup_seconds = time.perf_counter() - t0
        logger.info("agent %s ready in %.2fs", self.spec.model, self.setup_seconds)

    def agent_for(self, spec: AgentSpec) -> Agent:
        """The worker's agent, rebuilt if the run asks for a different spec."""
        from cluster_app.agent.agent import Agent

        self.ready.wait()
        with self.lock:
            if self.agent is None or self.agent.spec.key() != spec.key():
                self.agent = Agent(spec)
                self.spec = spec
            return self.agent

    def memory(self, run_url: str, k: int) -> Consolidation:
        """A continual run's consolidation of ``k`` tasks, read once (checked) and kept."""
        with self.lock:
            if self._memory is None or self._memory[0] != (run_url, k):
                self._memory = ((run_url, k), consolidation.load(run_url, k))
            return self._memory[1]

    def store(self, url: str) -> ParamStore:
        if url not in self.stores:
            self.stores[url] = ParamStore(url)
        return self.stores[url]


def agent_cold_start() -> dict:
    """Where this worker's start went (see ``AgentPlugin._build``)."""
    return dict(getattr(_plugin(), "cold_start", {}))


def _plugin() -> AgentPlugin:
    worker = get_worker()
    try:
        return cast(AgentPlugin, worker.plugins[PLUGIN_NAME])
    except KeyError:
        raise RunError(
            f"worker {worker.address} has no {PLUGIN_NAME!r} plugin; "
            "register AgentPlugin (AgentCluster does this) before submitting agent tasks"
        ) from None


def get_agent(spec: AgentSpec) -> Agent:
    """The agent of the worker this task runs on."""
    return _plugin().agent_for(spec)


def _sync_to(agent: Agent, store: ParamStore, version: int) -> int:
    """Bring ``agent`` to ``version`` of the run at ``store``; returns the bytes pulled
    (compressed deltas when it can; nothing when the agent's own fresh parameters are that
    version, as version 0 of a run is). Switching runs resets the agent's run-local state."""
    if agent.run != store.url:
        agent.reset(run=store.url)
    if agent.version == version:
        return 0
    before = store.bytes_read
    if agent.base is not None:
        have = (agent.base_version, agent.base)
    else:  # the store compares digests: a match costs no read
        have = (None, agent.init_params())
    flat, rec = store.read(version, have=have)
    agent.load(flat, version, reset_residual=rec.kind == "full")
    return store.bytes_read - before


def agent_init(
    spec: AgentSpec, store_url: str, meta: dict | None = None, init: tuple | None = None
) -> int:
    """Commit version 0 unless the store has versions: fresh parameters from the spec's seed,
    or, with ``init=(registry store url, commit id)``, that registry commit's parameters, or
    with ``init=("run", run url, version)`` that version of another run (refused with
    :class:`SpecError` if they do not fit the spec's model)."""
    plugin = _plugin()
    store = plugin.store(store_url)
    latest = store.latest()
    if latest is not None:
        return latest
    fresh = plugin.agent_for(spec).init_params()
    params = fresh
    if init is not None:
        if init[0] == "run":
            params, source = ParamStore(init[1]).read(init[2])[0], f"version {init[2]} of {init[1]}"
        else:
            params, source = Registry(init[0]).params(init[1]), f"commit {init[1][:12]}"
        shapes = {k: v.shape for k, v in params.items()}
        want = {k: v.shape for k, v in fresh.items()}
        if shapes != want:
            wrong = sorted(set(shapes) ^ set(want) | {k for k in want if shapes.get(k) != want[k]})
            raise SpecError(
                f"{source} does not fit this run's {spec.model} model "
                f"(leaves that differ: {', '.join(wrong[:5])})"
            )
        params = {k: v.astype(fresh[k].dtype) for k, v in params.items()}
    # if another task initialised it first, version 0 exists and that is all we need
    with contextlib.suppress(CommitConflict):
        store.commit_full(params, version=0, meta=meta or {})
    return 0


def agent_round(
    *,
    spec: AgentSpec,
    sync: SyncSpec,
    store_url: str,
    base_version: int,
    round: int,
    shard: int,
    num_shards: int,
    steps: int,
    worker: str | None = None,
    plan: RoundPlan | None = None,
) -> RoundResult:
    """One agent's share of a round: sync to ``base_version``, train, push the delta.

    The compressed delta is written by the plugin's pusher thread: with ``sync.async_push`` the
    task returns as soon as training ends (the coordinator waits for the object's seal), so the
    worker is free for its next task while the write proceeds.

    ``worker``: the worker the shard is meant for. If that worker was lost and Dask moved the
    task elsewhere, it returns at once with nothing pushed, so it never occupies the worker
    that the run loop may hand the shard to (a hot standby) for a whole round.

    ``plan``: a continual run's instructions for the round (its task, replay, EWC, frozen
    leaves; :mod:`cluster_app.learning`).
    """
    here = get_worker().address
    if worker is not None and here != worker:
        push = Push(here, round, shard, base_version, error=f"misplaced: meant for {worker}")
        return RoundResult(push, 0, math.nan, math.nan, math.nan, 0, 0.0, math.nan)
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    store = plugin.store(store_url)
    with agent.lock:
        agent.busy = True
        try:
            t_pull = time.perf_counter()
            pull_bytes = _sync_to(agent, store, base_version)
            pull_seconds = time.perf_counter() - t_pull
            started = time.time()
            memory = None
            if plan is not None and plan.consolidated:
                memory = plugin.memory(store_url, plan.consolidated)
            delta, metrics = agent.train(round, shard, num_shards, steps, plan, memory)
            t0 = time.perf_counter()
            bad = next((k for k, v in delta.items() if not np.isfinite(v).all()), None)
            encoded = None if bad else agent.encode(delta, sync.codec)
            encode_seconds = time.perf_counter() - t0
        finally:
            agent.busy = False
    push = Push(worker=here, round=round, shard=shard, base_version=base_version)
    if encoded is None:  # diverged: never push it; the coordinator counts the rejection
        push = replace(push, error=f"leaf {bad!r} contains NaN or Inf")
    else:
        name = f"delta-r{round}-s{shard}-{uuid.uuid4().hex[:12]}"
        push = replace(push, delta=name)
        with plugin.lock_pending:
            plugin.pending += 1
        write = plugin.pusher.submit(_timed_put, store, encoded, sync.codec, name)
        write.add_done_callback(functools.partial(_pushed, plugin, get_worker(), encode_seconds))
        if not sync.async_push:
            write.result()
    return RoundResult(
        push=push,
        pull_bytes=pull_bytes,
        encode_seconds=encode_seconds,
        started=started,
        pull_seconds=pull_seconds,
        **metrics,
    )


def _timed_put(store, encoded, codec: str, name: str) -> float:
    """Write one delta (the pusher thread); returns the seconds it took."""
    t0 = time.perf_counter()
    store.put_object(encoded, "delta", codec, name)
    return time.perf_counter() - t0


def _pushed(plugin: AgentPlugin, worker, encode_seconds: float, fut) -> None:
    """A delta's write ended: report it to the scheduler (the sync latency the dashboard and
    Prometheus show); a failure is logged too, and the coordinator sees a missing seal."""
    with plugin.lock_pending:
        plugin.pending -= 1
    error = fut.exception()
    if error is not None:
        logger.error("background push failed: %r", error)
    seconds = None if error is not None else encode_seconds + fut.result()
    try:
        worker.log_event(
            events.PUSH,
            {"worker": worker.address, "seconds": seconds, "error": repr(error) if error else None},
        )
    except Exception:  # the worker is closing: the event is lost, nothing else is
        logger.debug("could not report a push", exc_info=True)


def agent_warm(spec: AgentSpec, store_url: str, version: int) -> dict:
    """Keep a hot standby warm: build the agent if needed and load ``version`` (no training)."""
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    with agent.lock:
        pulled = _sync_to(agent, plugin.store(store_url), version)
    return {"worker": get_worker().address, "version": version, "pull_bytes": pulled}


def agent_eval(spec: AgentSpec, store_url: str, version: int, n_batches: int) -> dict:
    """Held-out metrics of ``version`` (and the bytes pulled to reach it: the agent that
    evaluates skips that pull in its next round, so sync accounting includes it)."""
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    with agent.lock:
        pulled = _sync_to(agent, plugin.store(store_url), version)
        return {"version": version, "pull_bytes": pulled, **agent.evaluate(n_batches)}


def agent_complete(
    spec: AgentSpec,
    store_url: str,
    version: int,
    prompt: str,
    n_chars: int,
    temperature: float = 0.0,
) -> str:
    """Complete ``prompt`` with ``version`` of the model."""
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    with agent.lock:
        _sync_to(agent, plugin.store(store_url), version)
        return agent.complete(prompt, n_chars, temperature)


def agent_evaluate(store_url: str, config: dict, params_digest: str, spec: EvalSpec) -> dict:
    """Held-out metrics of the registry parameters ``params_digest`` (the registry's eval
    spec), on this worker. The worker's own agent and its run state are left alone."""
    from cluster_app.agent.evaluate import LocalEvaluator  # JAX: loaded on the worker only

    _plugin().ready.wait()
    return LocalEvaluator(store_url)(config, params_digest, spec)


def agent_serve(
    store_url: str,
    cfg: dict,
    params_digest: str,
    prompts: list[str],
    max_new: int,
    temperatures: list[float],
    seed: int = 0,
) -> list[str]:
    """Complete one batch of prompts with a served version (kept in memory on this worker)."""
    from cluster_app.agent.serve import serve_batch  # JAX: loaded on the worker only

    _plugin().ready.wait()
    return serve_batch(store_url, cfg, params_digest, prompts, max_new, temperatures, seed)


def agent_serve_warm(
    store_url: str, cfg: dict, params_digest: str, max_new: int, size: int
) -> float:
    """Load a served version on this worker and compile one batch program before traffic."""
    from cluster_app.agent.serve import warm

    _plugin().ready.wait()
    return warm(store_url, cfg, params_digest, max_new, size)


def agent_score(store_url: str, cfg: dict, params_digest: str, texts: list[str]) -> float:
    """The served version's mean next-character loss on ``texts`` (logged prompts)."""
    from cluster_app.agent.serve import score_texts

    _plugin().ready.wait()
    return score_texts(store_url, cfg, params_digest, texts)

"""The completion gateway: an OpenAI-compatible HTTP API in front of the learning fleet.

``POST /v1/completions`` (``prompt``, ``max_tokens``, ``temperature``, ``stop``, ``user``,
``model``) is validated, routed by the live :class:`~cluster_app.serving.router.Split` (or, with
``model`` naming a registry ref, to that ref), batched (``batcher.py``) and completed as one
high-priority ``agent-serve-*`` task per batch: our placement plugin puts it on the best free
worker (a hot standby while a training round occupies the others), whose agent keeps the
served versions in memory. Also ``GET /healthz``, ``GET /metrics`` (Prometheus),
``GET /v1/models``, and ``GET`` / ``PUT /v1/split`` and ``POST /v1/split/rollback`` to manage
A/B splits, canaries and shadows; the canary loop rolls a breaching candidate back by itself.

Bad input gets a 4xx with an OpenAI-style error body (``{"error": {"message", "type", "param",
"code"}}``), overload a 429 with ``Retry-After``, a request that cannot finish in
``serving.timeout`` a 504: never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections import deque
from typing import Any

from distributed import Client
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cluster_app.agent.spec import BATCH_BUCKETS
from cluster_app.agent.worker import agent_score, agent_serve, agent_serve_warm
from cluster_app.errors import ClusterAppError, RefNotFound, SpecError
from cluster_app.observe import events
from cluster_app.serving.batcher import Batcher, Overloaded
from cluster_app.serving.canary import judge
from cluster_app.serving.metrics import ServingMetrics
from cluster_app.serving.openai import BadRequest, _parse, _response
from cluster_app.serving.openai import error_response as _error
from cluster_app.serving.router import Arm, Split, choose
from cluster_app.serving.spec import ServeSpec
from cluster_app.sync.exclusive import replace_atomic
from cluster_app.versions.registry import Registry

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)
_TRAINING = ("agent-round-",)  # tasks that hold a worker for seconds (a run controller secedes)
_TRAINING_MEMORY = 30.0  # seconds a worker that ran a round still counts as a training worker


class Gateway:
    """Serves completions from registry refs through the cluster at ``address``."""

    def __init__(
        self,
        address: str,
        store_url: str,
        ref: str = "prod",
        spec: ServeSpec | None = None,
        storage_options: dict | None = None,
        batching: bool = True,
    ) -> None:
        self.address, self.store_url, self.ref = address, store_url, ref
        self.spec = spec or ServeSpec.from_config()
        self.registry = Registry(store_url, storage_options)
        self.batching = batching
        self.metrics = ServingMetrics()
        self.logged: deque[str] = deque(maxlen=max(self.spec.quality_window * 4, 64))
        self.events: deque[dict] = deque(maxlen=100)
        self.rollbacks = 0  # automatic and manual, since this gateway started
        self.configs: dict[str, dict] = {}
        self._direct: dict[str, tuple[float, Arm]] = {}
        self._tasks: set[asyncio.Future] = set()  # shadow requests in flight
        self.warmed = False  # every worker holds the split's versions, compiled
        self._warm_params: set[str] = set()  # versions compiled on a worker (and so cached)
        self.free_workers: list[str] = []  # workers running no training round
        self.split: Split | None = None
        self.client: Client | None = None
        self.batcher: Batcher | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/split", self.get_split, methods=["GET"]),
                Route("/v1/split", self.put_split, methods=["PUT"]),
                Route("/v1/split/rollback", self.post_rollback, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.client = await Client(self.address, asynchronous=True)  # type: ignore[misc]
        spec = self.spec
        self.batcher = Batcher(
            self._dispatch,
            window=spec.window if self.batching else 0.0,
            max_batch=spec.max_batch if self.batching else 1,
            max_queue=spec.max_queue,
            max_in_flight=spec.max_in_flight if self.batching else spec.max_queue,
        )
        self.split = self._load_split() or Split(arms=(self._arm(self.ref, 1.0),))
        self._save_split()
        # ready means ready: every worker holds the served versions and their programs
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._warm(self.split), 600)
        canary = asyncio.create_task(self._canary_loop())
        watch = asyncio.create_task(self._watch_workers())
        try:
            yield
        finally:
            canary.cancel()
            watch.cancel()
            await self.client.close()  # type: ignore[misc]

    # ------------------------------------------------------------------ arms and splits
    def _arm(self, ref: str, weight: float) -> Arm:
        try:
            commit = self.registry.get(ref)
        except RefNotFound as e:
            raise BadRequest(str(e), "model", 404, "model_not_found") from e
        if commit.config.get("agent", {}).get("model") != "codelm":
            raise BadRequest(f"{ref} is not a code model: it cannot complete text", "model")
        self.configs[commit.params] = commit.config
        return Arm(ref=ref, commit=commit.id, weight=float(weight), params=commit.params)

    def _split_path(self) -> str:
        """``<store>/serving/<name>/split.json`` (beside the registry)."""
        store_root = self.registry.root.removesuffix("/registry")
        return f"{store_root}/serving/{self.spec.name}/split.json"

    def _load_split(self) -> Split | None:
        try:
            split = Split.from_dict(json.loads(self.registry.fs.cat_file(self._split_path())))
        except FileNotFoundError:
            return None
        for arm in (*split.arms, *([split.shadow] if split.shadow else [])):
            self.configs[arm.params] = self.registry.get(arm.commit).config
        return split

    def _save_split(self) -> None:
        path = self._split_path()
        self.registry.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        assert self.split is not None
        replace_atomic(self.registry.fs, path, json.dumps(self.split.to_dict()).encode())

    def _event(self, kind: str, **fields: Any) -> None:
        event = {"time": time.time(), "kind": kind, **fields}
        self.events.append(event)
        path = f"{self._split_path().rsplit('/', 1)[0]}/events/{time.time_ns()}.json"
        self.registry.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        replace_atomic(self.registry.fs, path, json.dumps(event).encode())

    async def set_split(self, arms: list[tuple[str, float]], shadow: str | None = None) -> Split:
        """Start a new split (a new id: its canary starts clean). Its versions are loaded and
        compiled first, so no user waits for that and the canary judges a warm candidate
        against a warm baseline; the old split serves meanwhile."""
        split = Split(
            arms=tuple(self._arm(r, w) for r, w in arms),
            shadow=self._arm(shadow, 0.0) if shadow else None,
        )
        await asyncio.wait_for(self._warm(split), self.spec.timeout * 30)
        self.split = split
        self._save_split()
        self._event(
            "split", split=split.id, arms=[[a.ref, a.weight] for a in split.arms], shadow=shadow
        )
        return split

    async def _watch_workers(self) -> None:
        """Keep :attr:`free_workers`: those that ran no training round lately (the hot
        standbys, idle workers; a worker between two rounds still counts as training). Batches
        prefer them, so a request does not wait behind a round."""
        assert self.client is not None
        last_round: dict[str, float] = {}
        while True:
            try:
                processing: dict = await self.client.scheduler.processing()  # type: ignore[union-attr, assignment]
                now = time.monotonic()
                for w, keys in processing.items():
                    if any(str(k).startswith(_TRAINING) for k in keys):
                        last_round[w] = now
                self.free_workers = [
                    w for w in processing if now - last_round.get(w, -math.inf) > _TRAINING_MEMORY
                ]
            except Exception:  # a scheduler restart: keep the last view and try again
                logger.debug("could not list processing tasks", exc_info=True)
            await asyncio.sleep(self.spec.free_refresh)

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # (asyncio keeps only weak references to tasks)
        task.add_done_callback(self._tasks.discard)

    async def _workers(self) -> list[str]:
        """The scheduler's workers now (the asynchronous client's cache may be stale)."""
        if self.client is None:
            return []
        info: dict = await self.client.scheduler.identity()  # type: ignore[union-attr, assignment]
        return list(info.get("workers", {}))

    def _warm_task(self, arm: Arm, size: int, worker: str | None):
        assert self.client is not None
        n = min(1 << (self.spec.default_max_tokens - 1).bit_length(), self.spec.max_tokens)
        where = {} if worker is None else {"workers": [worker], "allow_other_workers": False}
        return self.client.submit(
            agent_serve_warm,
            self.store_url,
            self.configs[arm.params],
            arm.params,
            max(n, self.spec.default_max_tokens),
            size,
            key=f"agent-serve-warm-{arm.params[:8]}-{size}-{uuid.uuid4().hex[:8]}",
            priority=self.spec.priority - 2,
            pure=False,
            **where,
        )

    async def _warm(self, split: Split) -> None:
        """Load the split's versions and compile their programs for the default completion
        length: first on whichever worker is free (placed by our plugin, as requests are), one
        batch size at a time, so the programs land in the persistent JAX cache; the gateway is
        ready then. The other workers load them in the background (:meth:`_warm_rest`)."""
        if self.client is None:
            return
        sizes = [b for b in BATCH_BUCKETS if b <= self.spec.max_batch]
        arms = [
            a
            for a in (*split.arms, *([split.shadow] if split.shadow else []))
            if a.params not in self._warm_params
        ]
        if not arms:
            return
        self.warmed = False
        for arm in arms:
            for size in sizes:
                await self._warm_task(arm, size, None)
            self._warm_params.add(arm.params)
        self._background(self._warm_rest(arms, sizes))

    async def _warm_rest(self, arms, sizes) -> None:
        """Every worker loads the versions and their programs (from the cache); a worker busy
        training does it after its round."""
        futs = [
            self._warm_task(a, size, w)
            for a in arms
            for size in sizes
            for w in await self._workers()
        ]
        try:
            await self.client.gather(futs)  # type: ignore[union-attr, misc]
        except Exception:  # the gateway stopped or a worker left mid-way: it loads on first use
            logger.debug("the warm-up of every worker did not finish", exc_info=True)
            return
        self.warmed = True

    def rollback(self, reason: str) -> None:
        assert self.split is not None
        self.split = self.split.rolled_back(reason)
        self._save_split()
        self.metrics.rollbacks.inc()
        self.rollbacks += 1
        self._event("rollback", split=self.split.id, reason=reason)
        logger.warning("split %s rolled back: %s", self.split.id, reason)

    # ------------------------------------------------------------------ the work
    async def _dispatch(self, key, payloads: list[tuple[str, float]]) -> list[str]:
        params_digest, n_new = key
        assert self.client is not None
        where = (
            {"workers": self.free_workers, "allow_other_workers": True} if self.free_workers else {}
        )
        fut = self.client.submit(
            agent_serve,
            self.store_url,
            self.configs[params_digest],
            params_digest,
            [p for p, _ in payloads],
            n_new,
            [t for _, t in payloads],
            random.randrange(2**31),
            key=f"agent-serve-{params_digest[:8]}-{uuid.uuid4().hex[:12]}",
            priority=self.spec.priority,
            pure=False,
            **where,
        )
        self.metrics.batch_size.observe(len(payloads))
        return await fut  # type: ignore[misc]

    async def _complete(self, arm: Arm, prompts: list[str], max_tokens: int, temps: float):
        assert self.batcher is not None
        bucket = min(1 << (max_tokens - 1).bit_length(), self.spec.max_tokens)
        key = (arm.params, max(bucket, max_tokens))
        jobs = [self.batcher.submit(key, (p, temps)) for p in prompts]
        return await asyncio.wait_for(asyncio.gather(*jobs), self.spec.timeout)

    def _route(self, model: str | None, user: str | None) -> tuple[Arm, str]:
        assert self.split is not None
        if model is None or model == self.spec.name:
            arm = choose(self.split, user)
            return arm, "baseline" if arm.ref == self.split.baseline.ref else "candidate"
        cached = self._direct.get(model)
        if cached is None or time.monotonic() - cached[0] > 1.0:
            cached = (time.monotonic(), self._arm(model, 1.0))
            self._direct[model] = cached
        return cached[1], "direct"

    async def completions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            body = _parse(await request.body(), self.spec)
            arm, role = self._route(body["model"], body["user"])
        except BadRequest as e:
            kind = (
                "invalid_request_error" if e.status < 404 or e.status > 404 else "not_found_error"
            )
            return _error(e.status, str(e), kind, e.param, e.code)
        assert self.split is not None
        stats = self.metrics.arm(self.split.id, arm.ref) if role != "direct" else None
        self.metrics.queue.set(self.batcher.queued if self.batcher else 0)
        try:
            texts = await self._complete(
                arm, body["prompts"], body["max_tokens"], body["temperature"]
            )
        except Overloaded as e:
            self.metrics.requests.labels(role, "overloaded").inc()
            return _error(
                429, str(e), "server_overloaded", headers={"Retry-After": f"{e.retry_after:.0f}"}
            )
        except asyncio.TimeoutError:
            self._record(stats, role, t0, ok=False, outcome="timeout")
            return _error(504, f"no answer within {self.spec.timeout:g}s", "timeout")
        except (ClusterAppError, Exception) as e:  # a worker or the cluster failed
            self._record(stats, role, t0, ok=False, outcome="error")
            logger.exception("completion failed")
            return _error(
                503, f"the cluster could not complete this request: {e!r}", "server_error"
            )
        if role != "direct":
            self.logged.extend(body["prompts"])
            shadow = self.split.shadow
            if shadow is not None:
                self._background(self._shadow(shadow, body))
        self._record(stats, role, t0, ok=True, outcome="ok")
        return JSONResponse(_response(body, texts, arm, self.spec))

    async def _shadow(self, arm: Arm, body: dict) -> None:
        t0 = time.perf_counter()
        assert self.split is not None
        stats = self.metrics.arm(self.split.id, f"shadow:{arm.ref}")
        try:
            await self._complete(arm, body["prompts"], body["max_tokens"], body["temperature"])
            self._record(stats, "shadow", t0, ok=True, outcome="ok")
        except Exception:  # a shadow's failure is counted, never seen by the client
            self._record(stats, "shadow", t0, ok=False, outcome="error")

    def _record(self, stats, role: str, t0: float, ok: bool, outcome: str) -> None:
        dt = time.perf_counter() - t0
        self.metrics.latency.labels(role).observe(dt)
        self.metrics.requests.labels(role, outcome).inc()
        if stats is not None:
            stats.record(dt, ok)

    # ------------------------------------------------------------------ the canary
    async def _canary_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.check_every)
            try:
                await self.check()
            except Exception:  # the loop must survive a failed check
                logger.exception("canary check failed")
            try:  # the split and its arms' latency, for the dashboard page
                await self.client.log_event(events.SERVING, self.report())  # type: ignore[union-attr, misc]
            except Exception:
                logger.debug("could not report the split", exc_info=True)

    def report(self) -> dict[str, Any]:
        """The live split and each arm's recent numbers (a ``SERVING`` event)."""
        assert self.split is not None
        split = self.split
        arms = []
        for a in (*split.arms, *([split.shadow] if split.shadow else [])):
            label = a.ref if a is not split.shadow else f"shadow:{a.ref}"
            summary = self.metrics.arm(split.id, label).summary()
            arms.append({"ref": label, "weight": a.weight, **summary})
        return {
            "name": self.spec.name,
            "split": split.id,
            "state": split.state,
            "reason": split.reason,
            "arms": arms,
            "rollbacks": self.rollbacks,
            "time": time.time(),
        }

    async def check(self) -> list[str]:
        """Judge the live split's candidates now; roll back on breach. Returns the reasons."""
        split = self.split
        if split is None or split.state != "active" or not split.candidates:
            return []
        base = self.metrics.arm(split.id, split.baseline.ref)
        for cand in split.candidates:
            if cand.weight <= 0:
                continue
            stats = self.metrics.arm(split.id, cand.ref)
            quality = None
            texts = list(self.logged)[-self.spec.quality_window :]
            if len(texts) >= min(8, self.spec.quality_window) and stats.requests:
                quality = await self._quality(split.baseline, cand, texts)
            reasons = judge(self.spec, base, stats, quality)
            if reasons and self.split is split:
                self.rollback(f"{cand.ref}: " + "; ".join(reasons))
                return reasons
        return []

    async def _quality(self, base: Arm, cand: Arm, texts: list[str]) -> tuple[float, float]:
        assert self.client is not None
        futs = [
            self.client.submit(
                agent_score,
                self.store_url,
                self.configs[a.params],
                a.params,
                texts,
                key=f"agent-score-{a.params[:8]}-{uuid.uuid4().hex[:8]}",
                priority=self.spec.priority - 1,
                pure=False,
            )
            for a in (base, cand)
        ]
        b, c = await self.client.gather(futs)  # type: ignore[misc]
        return float(b), float(c)

    # ------------------------------------------------------------------ other routes
    async def models(self, request: Request) -> Response:
        names = [self.spec.name, *self.registry.branches(), *self.registry.tags()]
        data = [{"id": n, "object": "model", "owned_by": "cluster-app"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def get_split(self, request: Request) -> Response:
        assert self.split is not None
        split = self.split
        arms = [*split.arms] + ([split.shadow] if split.shadow else [])
        stats = {
            a.ref: self.metrics.arm(
                split.id, a.ref if a is not split.shadow else f"shadow:{a.ref}"
            ).summary()
            for a in arms
        }
        return JSONResponse({**split.to_dict(), "stats": stats, "events": list(self.events)[-20:]})

    async def put_split(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            arms = [(str(a["ref"]), float(a["weight"])) for a in body["arms"]]
            split = await self.set_split(arms, body.get("shadow"))
        except asyncio.TimeoutError:
            return _error(503, "the split's versions did not load in time", "server_error")
        except BadRequest as e:
            return _error(e.status, str(e), "invalid_request_error", e.param, e.code)
        except (ValueError, KeyError, TypeError, SpecError) as e:
            return _error(
                400,
                f"a split is {{'arms': [{{'ref', 'weight'}}, ...], 'shadow': ref}}: {e}",
                "invalid_request_error",
            )
        return JSONResponse(split.to_dict())

    async def post_rollback(self, request: Request) -> Response:
        raw = await request.body()
        reason = (json.loads(raw).get("reason") if raw else None) or "manual rollback"
        self.rollback(str(reason))
        assert self.split is not None
        return JSONResponse(self.split.to_dict())

    async def healthz(self, request: Request) -> Response:
        workers = len(await self._workers())
        ok = workers > 0
        body = {
            "status": "ok" if ok else "no workers",
            "workers": workers,
            "split": self.split.id if self.split else None,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(
            generate_latest(self.metrics.registry), media_type="text/plain; version=0.0.4"
        )

"""``Versions``: the registry with runs in view: commit a run's version, start runs from refs,
collect garbage that no live run needs, and evaluate on the fleet or in this process.

Every operation of :mod:`cluster_app.versions` is a method here, so one object (``ac.versions``
or ``Versions(store_url)``) does it all; ``cluster-app versions ...`` drives the same methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import fsspec
from distributed import Client

from cluster_app.agent.worker import agent_evaluate
from cluster_app.errors import RunError, VersionNotFound
from cluster_app.observe import events
from cluster_app.runs.record import DONE, RunRecord
from cluster_app.sync.store import ParamStore
from cluster_app.versions import gc, ops
from cluster_app.versions.commits import Revision
from cluster_app.versions.gate import EvalSpec, Gate
from cluster_app.versions.names import BRANCH
from cluster_app.versions.refs import RefEntry
from cluster_app.versions.registry import Evaluator, Registry

__all__ = ["FleetEvaluator", "Versions", "live_pins"]

logger = logging.getLogger(__name__)


class FleetEvaluator:
    """Evaluates registry commits as agent tasks on the cluster (placed by our plugin)."""

    def __init__(self, client: Client, store_url: str) -> None:
        self.client, self.store_url = client, store_url

    def __call__(self, config: dict, params_digest: str, spec: EvalSpec) -> dict:
        key = f"agent-evaluate-{params_digest[:12]}-{spec.key()}-{time.time_ns()}"
        fut = self.client.submit(
            agent_evaluate, self.store_url, config, params_digest, spec, key=key, retries=2
        )
        return fut.result()


def _local(store_url: str, storage_options: dict | None) -> Evaluator:
    def evaluate(config: dict, params_digest: str, spec: EvalSpec) -> dict:
        from cluster_app.agent.evaluate import LocalEvaluator  # JAX: only when evaluating

        return LocalEvaluator(store_url, storage_options)(config, params_digest, spec)

    return evaluate


def _run_dirs(store_url: str, storage_options: dict | None) -> list[tuple[Any, str]]:
    fs, root = fsspec.core.url_to_fs(store_url, **(storage_options or {}))
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    dirs = [e["name"] for e in entries if e["type"] == "directory"]
    return [(fs, d) for d in dirs if fs.exists(f"{d}/run.json")]


def _report_move(client: Client, entry: RefEntry) -> None:
    msg = {
        "kind": "branch" if entry.kind == BRANCH else "tag",
        "name": entry.name,
        "commit": entry.target,
        "previous": entry.previous,
        "action": entry.action,
        "author": entry.author,
        "time": entry.time,
    }
    try:
        client.log_event(events.REF, msg)
    except Exception:  # observability never fails a registry operation
        logger.debug("could not report a ref move", exc_info=True)


def live_pins(store_url: str, storage_options: dict | None = None) -> list[str]:
    """Registry commits that runs still going (not finished, stopped or failed) started from."""
    pins = []
    for fs, root in _run_dirs(store_url, storage_options):
        record = RunRecord.reader(fs, root)
        if record.status().get("phase") in DONE:
            continue
        try:
            meta = ParamStore(record.url, storage_options).record(0).meta
        except VersionNotFound:
            continue
        if meta.get("from_commit"):
            pins.append(meta["from_commit"])
    return pins


def _continual_lineage(cs: dict, first: dict, history: list[dict]) -> dict:
    """What a continual run's commit records of it: its mode, its tasks in order, what protected
    them, where it started, and its report over every task (cluster_app.learning.report)."""
    from cluster_app.learning.report import history_report

    tasks = [t["name"] for t in (*cs.get("prior_tasks", ()), *cs["tasks"])]
    full, rep = history_report(history), None
    if full is not None:
        rep = {
            k: full[k]
            for k in (
                "metric",
                "average",
                "backward_transfer",
                "forgetting",
                "min_after_switch",
                "matrix",
            )
        }
    return {
        "mode": cs["mode"],
        "scenario": cs["scenario"],
        "tasks": tasks,
        "prior_tasks": len(cs.get("prior_tasks", ())),
        "replay_size": cs["replay_size"],
        "ewc": {"lambda": cs["ewc_lambda"], "fisher": cs["fisher"]} if cs["ewc_lambda"] else None,
        "freeze": list(cs["freeze"]),
        "from_run": first.get("from_run"),
        "from_version": first.get("from_version"),
        "report": rep,
    }


class Versions(Registry):
    """The registry of the store at ``store_url`` with its operations.

    ``evaluator`` defaults to evaluating in this process (JAX is imported when first needed);
    ``AgentCluster.versions`` passes one that evaluates on the fleet. With a ``client``, every
    branch and tag move is reported to its scheduler (a ``REF`` event: the dashboard page).
    """

    def __init__(
        self,
        store_url: str,
        storage_options: dict | None = None,
        evaluator: Evaluator | None = None,
        client: Client | None = None,
    ) -> None:
        super().__init__(
            store_url, storage_options, evaluator or _local(store_url, storage_options)
        )
        if client is not None:
            self.refs.listeners.append(lambda entry: _report_move(client, entry))

    def commit_run(
        self,
        run: str,
        version: int | None = None,
        *,
        branch: str = "dev",
        message: str = "",
        author: str | None = None,
        evaluate: bool = True,
    ) -> Revision:
        """Commit ``version`` (default: the newest) of run ``run`` (an id in this store or a
        run URL) to ``branch``, with the run's spec as its config and its lineage."""
        run_url = run if "/" in run or "://" in run else f"{self.store_url}/{run}"
        record = RunRecord(run_url, self.storage_options)
        if not record.exists():
            raise RunError(f"no run at {run_url}")
        spec = record.spec()
        store = ParamStore(run_url, self.storage_options)
        params, rec = store.read(version)
        history = {h["version"]: h for h in record.history()}
        first = store.record(0).meta
        lineage = {
            "run_id": spec.get("run_id"),
            "run_url": run_url,
            "version": rec.version,
            "round": rec.meta.get("round"),
            "corpus": {"dataset": spec["agent"]["dataset"], **spec["agent"].get("data_kwargs", {})},
            "shards": history.get(rec.version, {}).get("agents"),
            "local_steps": spec.get("local_steps"),
            "from_commit": first.get("from_commit"),
        }
        if spec.get("continual"):
            lineage["continual"] = _continual_lineage(spec["continual"], first, record.history())
        return self.commit(
            params,
            branch=branch,
            message=message or f"{spec.get('run_id')} version {rec.version}",
            author=author,
            config=spec,
            lineage=lineage,
            evaluate=evaluate,
        )

    def promote(self, candidate: str, target: str = "prod", **kw: Any) -> ops.Moved:
        """See :func:`cluster_app.versions.ops.promote`."""
        return ops.promote(self, candidate, target, **kw)

    def rollback(self, branch: str = "prod", to: str | None = None, **kw: Any) -> ops.Moved:
        """See :func:`cluster_app.versions.ops.rollback`."""
        return ops.rollback(self, branch, to, **kw)

    def fast_forward(self, source: str, into: str, **kw: Any) -> ops.Moved:
        """See :func:`cluster_app.versions.ops.fast_forward`."""
        return ops.fast_forward(self, source, into, **kw)

    def merge(self, source: str, into: str, **kw: Any) -> ops.Moved:
        """See :func:`cluster_app.versions.ops.merge`."""
        return ops.merge(self, source, into, **kw)

    def gc(self, *, dry_run: bool = False, pins: Iterable[str] = (), **kw: Any) -> gc.GCReport:
        """Collect garbage (:func:`cluster_app.versions.gc.collect`), keeping what live runs
        started from."""
        keep = [*pins, *live_pins(self.store_url, self.storage_options)]
        return gc.collect(self, dry_run=dry_run, pins=keep, **kw)

    def gate(self, **overrides: Any) -> Gate:
        """The configured gate (``cluster-app.versions.gate``), with ``overrides``."""
        return Gate.from_config(**overrides)

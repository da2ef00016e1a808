"""``Registry``: the model registry on the store, git's model with lakeFS's and the Hub's rules.

Layout under ``<store url>/registry`` (the same fsspec URL as the runs: a local directory or
S3)::

    commits/<id[:2]>/<id>.json   immutable, content-addressed commits (``commits.py``)
    params/, objects/, seals/    parameters, one sealed zarr snapshot per digest (``params.py``)
    refs/heads/, refs/tags/      branches and tags: compare-and-swap logs (``refs.py``)
    evals/<digest>-<spec>.json   eval reports, cached per parameters and eval spec

Nothing here runs a model: evaluation is a callable handed in (``evaluator(config, digest,
spec) -> metrics``; ``cluster_app.agent.evaluate`` has one that runs in-process, and
``AgentCluster.versions`` one that runs on the fleet). Promotion, rollback and merges are in
``ops.py``, garbage collection in ``gc.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import fsspec
import numpy as np

from cluster_app.errors import CommitConflict, CorruptData, RefConflict, RefNotFound, StoreError
from cluster_app.sync.exclusive import create_exclusive, replace_atomic
from cluster_app.sync.objects import ObjectIO
from cluster_app.versions import diff as _diff
from cluster_app.versions.commits import Revision, commit_id
from cluster_app.versions.gate import EvalSpec
from cluster_app.versions.names import BRANCH, TAG, check_ref_name, looks_like_id
from cluster_app.versions.params import ParamObjects
from cluster_app.versions.refs import ANY, RefEntry, RefStore, default_author

__all__ = ["Evaluator", "Registry"]

Evaluator = Callable[[dict, str, EvalSpec], dict]  # (config, params digest, spec) -> metrics
_UNSET = object()
_REV = re.compile(r"^(?P<base>.+?)(?:~(?P<n>\d+))?$")


class Registry:
    """Model versions of the store at ``store_url`` (its ``registry/`` folder).

    Parameters
    ----------
    store_url : str
        The store's root, as for runs (``cluster-app.store.url``).
    storage_options : dict, optional
        fsspec options for a remote store.
    evaluator : callable, optional
        ``evaluator(config, params_digest, eval_spec) -> {metric: value}``; needed by the
        operations that evaluate (commits with an eval report, promotion, merges).
    """

    def __init__(
        self,
        store_url: str,
        storage_options: dict | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.store_url = str(store_url).rstrip("/")
        self.url = f"{self.store_url}/registry"
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.fs.makedirs(f"{self.root}/commits", exist_ok=True)
        self.fs.makedirs(f"{self.root}/evals", exist_ok=True)
        self.objects = ParamObjects(ObjectIO(self.url, self.fs, self.root, self.storage_options))
        self.refs = RefStore(self.fs, self.root)
        self.evaluator = evaluator

    def __repr__(self) -> str:
        return f"Registry({self.store_url!r})"

    # ---------------------------------------------------------------- commits
    def _commit_path(self, cid: str) -> str:
        return f"{self.root}/commits/{cid[:2]}/{cid}.json"

    def get(self, rev: str) -> Revision:
        """The commit ``rev`` names (see :meth:`resolve`), checked against its id."""
        cid = self.resolve(rev)
        try:
            raw = self.fs.cat_file(self._commit_path(cid))
        except FileNotFoundError as e:
            raise RefNotFound(f"commit {cid[:12]} is not in {self.url}") from e
        try:
            found = Revision.from_json(raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise CorruptData(f"commit record {cid[:12]} is damaged: {e}") from e
        if found.id != cid or commit_id(asdict(found)) != cid:
            raise CorruptData(
                f"commit record {cid[:12]} does not match its id (tampered or damaged)"
            )
        return found

    def params(self, rev: str) -> dict[str, np.ndarray]:
        """The parameters of ``rev``, verified against the commit's digest."""
        return self.objects.get(self.get(rev).params)

    def commit(
        self,
        params: dict[str, np.ndarray],
        *,
        branch: str = "dev",
        message: str = "",
        author: str | None = None,
        config: dict | None = None,
        lineage: dict | None = None,
        eval_report: dict | None = None,
        parents: tuple[str, ...] | None = None,
        expected: object = _UNSET,
        evaluate: bool = True,
        action: str = "commit",
    ) -> Revision:
        """Store ``params`` (once per digest), create the commit and advance ``branch``.

        ``parents`` default to the branch's head, which the update then expects
        (compare-and-swap: :class:`RefConflict` if another writer moved the branch since).
        ``expected`` names another head to expect (the Hub's ``parent_commit``). With an
        evaluator, ``config`` and ``evaluate``, the commit carries an eval report.
        """
        check_ref_name(branch)
        head = self.refs.target(BRANCH, branch)
        if parents is None:
            parents = () if head is None else (head,)
        if expected is _UNSET:
            expected = head
        rev = self.create(
            params,
            parents=parents,
            message=message,
            author=author,
            config=config,
            lineage=lineage,
            eval_report=eval_report,
            evaluate=evaluate,
        )
        self.refs.update(
            BRANCH, branch, rev.id, expected, action=action, message=message, author=author
        )
        return rev

    def create(
        self,
        params: dict[str, np.ndarray],
        *,
        parents: tuple[str, ...],
        message: str = "",
        author: str | None = None,
        config: dict | None = None,
        lineage: dict | None = None,
        eval_report: dict | None = None,
        evaluate: bool = True,
    ) -> Revision:
        """Create a commit that no ref points at yet (a ref update makes it reachable)."""
        for p in parents:
            self.get(p)  # an unknown parent is refused before anything is written
        params_digest, pointer, _ = self.objects.put(params)
        config = dict(config or {})
        if eval_report is None and evaluate and self.evaluator is not None and config:
            eval_report = self.report_of(config, params_digest)
        fields: dict[str, Any] = {
            "params": params_digest,
            "parents": tuple(parents),
            "message": message,
            "author": author if author is not None else default_author(),
            "time": time.time(),
            "config": config,
            "lineage": dict(lineage or {}),
            "eval": dict(eval_report or {}),
            "leaves": pointer["leaves"],
            "nbytes": int(pointer["nbytes"]),
        }
        rev = Revision(id=commit_id(fields), **fields)
        path = self._commit_path(rev.id)
        self.fs.makedirs(os.path.dirname(path), exist_ok=True)
        # a conflict is the same content, committed by someone at the same instant: one commit
        with contextlib.suppress(CommitConflict):
            create_exclusive(self.fs, path, rev.to_json())
        if self.objects.pointer(params_digest) is None:  # collected while we committed
            raise StoreError(f"parameters {params_digest[:12]} vanished during the commit; retry")
        return rev

    # ---------------------------------------------------------------- names
    def resolve(self, rev: str) -> str:
        """The commit id ``rev`` names: a branch, a tag, an id or its unique prefix (7+ hex),
        any of them followed by ``~N`` (the N-th first-parent ancestor)."""
        if not isinstance(rev, str) or not rev:
            raise RefNotFound(f"{rev!r} is not a revision (a branch, tag or commit id)")
        m = _REV.match(rev)
        assert m is not None  # the pattern matches any non-empty string
        base, back = m["base"], int(m["n"] or 0)
        cid = self.refs.target(BRANCH, base) or self.refs.target(TAG, base)
        if cid is None and looks_like_id(base):
            cid = self._by_prefix(base)
        if cid is None:
            raise RefNotFound(f"no branch, tag or commit named {base!r} in {self.url}")
        for i in range(back):
            parents = self.get(cid).parents
            if not parents:
                raise RefNotFound(f"{base}~{i + 1} does not exist: {cid[:12]} has no parent")
            cid = parents[0]
        return cid

    def _by_prefix(self, prefix: str) -> str | None:
        if len(prefix) == 64:
            return prefix if self.fs.exists(self._commit_path(prefix)) else None
        d = f"{self.root}/commits/{prefix[:2]}"
        try:
            names = [n.rsplit("/", 1)[-1][:-5] for n in self.fs.ls(d, detail=False)]
        except FileNotFoundError:
            return None
        hits = [n for n in names if n.startswith(prefix)]
        if len(hits) > 1:
            raise RefNotFound(f"commit prefix {prefix!r} is ambiguous ({len(hits)} commits)")
        return hits[0] if hits else None

    def branches(self) -> dict[str, str]:
        """``{branch: commit id}``."""
        return {n: t for n in self.refs.names(BRANCH) if (t := self.refs.target(BRANCH, n))}

    def tags(self) -> dict[str, str]:
        """Every tag and the commit id it names."""
        return {n: t for n in self.refs.names(TAG) if (t := self.refs.target(TAG, n))}

    def branch(
        self, name: str, start: str, message: str = "", author: str | None = None
    ) -> RefEntry:
        """Create branch ``name`` at ``start``; :class:`RefConflict` if it exists."""
        cid = self.resolve(start)
        try:
            return self.refs.update(
                BRANCH,
                name,
                cid,
                None,
                action="branch",
                message=message or f"from {start}",
                author=author,
            )
        except RefConflict as e:
            raise RefConflict(f"branch {name!r} exists already") from e

    def tag(self, name: str, rev: str, message: str = "", author: str | None = None) -> RefEntry:
        """Tag ``rev`` as ``name`` (tags do not move: :class:`RefConflict` if it exists)."""
        cid = self.resolve(rev)
        try:
            return self.refs.update(
                TAG, name, cid, None, action="tag", message=message, author=author
            )
        except RefConflict as e:
            raise RefConflict(f"tag {name!r} exists already") from e

    def delete_branch(
        self, name: str, expected: object = ANY, author: str | None = None
    ) -> RefEntry:
        if self.refs.target(BRANCH, name) is None:
            raise RefNotFound(f"no branch {name!r} in {self.url}")
        return self.refs.update(BRANCH, name, None, expected, action="delete", author=author)

    def set_branch(
        self,
        name: str,
        rev: str,
        *,
        expected: object,
        action: str,
        message: str = "",
        author: str | None = None,
        extra: dict | None = None,
    ) -> RefEntry:
        """Point branch ``name`` at ``rev`` if its head is ``expected`` (compare-and-swap)."""
        return self.refs.update(
            BRANCH,
            name,
            self.resolve(rev),
            expected,
            action=action,
            message=message,
            author=author,
            extra=extra,
        )

    def reflog(self, name: str) -> list[RefEntry]:
        """Every move of branch (or tag) ``name``, oldest first."""
        kind = BRANCH if self.refs.head(BRANCH, name) is not None else TAG
        entries = self.refs.log(kind, name)
        if not entries:
            raise RefNotFound(f"no branch or tag {name!r} in {self.url}")
        return entries

    # ---------------------------------------------------------------- history
    def log(self, rev: str, limit: int | None = None) -> list[Revision]:
        """``rev`` and its ancestors, newest first (every parent, by time)."""
        out: list[Revision] = []
        seen: set[str] = set()
        frontier = [self.get(rev)]
        while frontier and (limit is None or len(out) < limit):
            frontier.sort(key=lambda c: c.time)
            c = frontier.pop()
            if c.id in seen:
                continue
            seen.add(c.id)
            out.append(c)
            frontier.extend(self.get(p) for p in c.parents if p not in seen)
        return out

    def ancestors(self, rev: str) -> set[str]:
        """Ids of ``rev`` and everything it descends from."""
        seen: set[str] = set()
        todo = [self.resolve(rev)]
        while todo:
            cid = todo.pop()
            if cid not in seen:
                seen.add(cid)
                todo.extend(self.get(cid).parents)
        return seen

    def merge_base(self, a: str, b: str) -> str | None:
        """The newest common ancestor of ``a`` and ``b`` (None: unrelated histories)."""
        common = self.ancestors(a) & self.ancestors(b)
        return max(common, key=lambda c: self.get(c).time) if common else None

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Config diff, per-layer parameter changes and eval deltas from ``a`` to ``b``."""
        ca, cb = self.get(a), self.get(b)
        return {
            "a": ca.id,
            "b": cb.id,
            "config": _diff.config_diff(ca.config, cb.config),
            "layers": _diff.layer_changes(self.objects.get(ca.params), self.objects.get(cb.params)),
            "eval": _diff.eval_diff(ca.metrics, cb.metrics),
        }

    # ---------------------------------------------------------------- evaluation
    def report_of(self, config: dict, params_digest: str, spec: EvalSpec | None = None) -> dict:
        """The eval report (``{"spec", "key", "metrics", "evaluated"}``) of parameters under
        ``spec`` (default from config): cached per digest and spec, else evaluated."""
        spec = spec or EvalSpec.from_config()
        path = f"{self.root}/evals/{params_digest}-{spec.key()}.json"
        try:
            return json.loads(self.fs.cat_file(path))
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if self.evaluator is None:
            raise StoreError("this registry has no evaluator: pass evaluator= to evaluate versions")
        metrics = self.evaluator(config, params_digest, spec)
        report = {
            "spec": asdict(spec),
            "key": spec.key(),
            "metrics": metrics,
            "evaluated": time.time(),
        }
        replace_atomic(self.fs, path, json.dumps(report).encode())
        return report

    def metrics(self, rev: str, spec: EvalSpec | None = None) -> dict[str, float]:
        """``rev``'s metrics under ``spec``: its own report when made with that spec."""
        c = self.get(rev)
        spec = spec or EvalSpec.from_config()
        if c.eval.get("key") == spec.key():
            return c.metrics
        if not c.config:
            raise StoreError(f"commit {c.short} has no training config: it cannot be evaluated")
        return self.report_of(c.config, c.params, spec)["metrics"]

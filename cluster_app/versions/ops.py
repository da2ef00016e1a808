"""Moving refs on evidence: promotion through the eval gate, rollback, fast-forward, three-way
weight merges. Every move is one compare-and-swap ref update, so concurrent promotions cannot
both win, and a refused one changes nothing."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

from cluster_app import config
from cluster_app.errors import GateRefused, MergeConflict, SpecError
from cluster_app.versions.commits import Revision
from cluster_app.versions.gate import EvalSpec, Gate, Verdict
from cluster_app.versions.merge import merge_params
from cluster_app.versions.names import BRANCH
from cluster_app.versions.refs import RefEntry
from cluster_app.versions.registry import Registry

__all__ = ["Moved", "fast_forward", "merge", "promote", "rollback"]


class Moved(NamedTuple):
    """A ref update and what justified it (None where nothing was judged)."""

    entry: RefEntry | None  # None: the ref was already there
    verdict: Verdict | None = None
    commit: Revision | None = None  # a merge's new commit


def promote(
    reg: Registry,
    candidate: str,
    target: str = "prod",
    *,
    gate: Gate | None = None,
    spec: EvalSpec | None = None,
    force: bool = False,
    message: str = "",
    author: str | None = None,
) -> Moved:
    """Point ``target`` at ``candidate`` if the gate passes it against ``target``'s head.

    A refusal raises :class:`GateRefused` (its ``verdict`` holds the figures) and moves
    nothing; ``force=True`` moves anyway and records the failed verdict and the override in the
    reflog entry. A first promotion (no ``target`` yet) is judged on the threshold alone.
    """
    gate = gate or Gate.from_config()
    cid = reg.resolve(candidate)
    head = reg.refs.target(BRANCH, target)
    if cid == head:
        return Moved(None)
    verdict = gate.check(reg.metrics(cid, spec), None if head is None else reg.metrics(head, spec))
    if not verdict.passed and not force:
        raise GateRefused(
            f"promotion of {candidate} ({cid[:12]}) to {target!r} refused: "
            + "; ".join(verdict.reasons),
            verdict,
        )
    extra = {
        "gate": {**asdict(gate), "verdict": verdict.to_dict()},
        "forced": bool(force and not verdict.passed),
        "candidate": candidate,
    }
    entry = reg.refs.update(
        BRANCH, target, cid, head, action="promote", message=message, author=author, extra=extra
    )
    return Moved(entry, verdict)


def rollback(
    reg: Registry,
    branch: str = "prod",
    to: str | None = None,
    *,
    message: str = "",
    author: str | None = None,
) -> Moved:
    """Point ``branch`` back at an earlier commit: ``to`` (one it held before, or an
    ancestor of its head), by default the commit it held before its current one."""
    log = reg.refs.log(BRANCH, branch)
    head = log[-1].target if log else None
    if head is None:
        raise SpecError(f"branch {branch!r} has no commit to roll back from")
    held = [e.target for e in log if e.target is not None]
    if to is None:
        earlier = [t for t in held if t != head]
        if not earlier:
            raise SpecError(f"branch {branch!r} has held no other commit: nothing to roll back to")
        cid = earlier[-1]
    else:
        cid = reg.resolve(to)
        if cid not in held and cid not in reg.ancestors(head):
            raise SpecError(f"{to} ({cid[:12]}) was never on {branch!r}: not a rollback")
    entry = reg.refs.update(
        BRANCH, branch, cid, head, action="rollback", message=message, author=author
    )
    return Moved(entry)


def fast_forward(
    reg: Registry, source: str, into: str, *, message: str = "", author: str | None = None
) -> Moved:
    """Move ``into`` to ``source`` if ``into``'s head is an ancestor of it."""
    cid = reg.resolve(source)
    head = reg.refs.target(BRANCH, into)
    if head == cid:
        return Moved(None)
    if head is not None and head not in reg.ancestors(cid):
        raise MergeConflict(f"{into!r} has diverged from {source}: not a fast-forward (merge it)")
    entry = reg.refs.update(
        BRANCH, into, cid, head, action="fast-forward", message=message, author=author
    )
    return Moved(entry)


def merge(
    reg: Registry,
    source: str,
    into: str,
    *,
    method: str | None = None,
    density: float | None = None,
    gate: Gate | None = None,
    spec: EvalSpec | None = None,
    message: str = "",
    author: str | None = None,
) -> Moved:
    """Merge ``source`` into branch ``into``.

    If ``into`` is an ancestor of ``source``, this is a fast-forward; otherwise the weights are
    merged three-way against the common ancestor (``method``: ``soup`` or ``ties``, default
    ``cluster-app.versions.merge``). Either way the result must pass ``gate`` against
    ``into``'s head (by default: no worse on the gate's metric); an eval regression is the
    merge's conflict (:class:`MergeConflict`, with the figures) and moves nothing.
    """
    gate = gate or Gate.from_config()
    theirs, ours = reg.resolve(source), reg.resolve(into)
    if theirs == ours or theirs in reg.ancestors(ours):
        return Moved(None)  # already merged
    if ours in reg.ancestors(theirs):
        verdict = gate.check(reg.metrics(theirs, spec), reg.metrics(ours, spec))
        if not verdict.passed:
            raise MergeConflict(_regressed(source, into, verdict), {"verdict": verdict.to_dict()})
        moved = fast_forward(reg, theirs, into, message=message, author=author)
        return Moved(moved.entry, verdict)
    base = reg.merge_base(ours, theirs)
    if base is None:
        raise MergeConflict(
            f"{source} and {into!r} have unrelated histories: nothing to merge against"
        )
    how: str = method or config.get("versions.merge")
    share: float = config.get("versions.ties-density", density)
    merged = merge_params(
        reg.params(base), reg.params(ours), reg.params(theirs), method=how, density=share
    )
    target = reg.get(ours)
    lineage: dict[str, Any] = {
        "merge": {
            "method": method,
            "density": density,
            "base": base,
            "ours": ours,
            "theirs": theirs,
        }
    }
    rev = reg.create(
        merged,
        parents=(ours, theirs),
        message=message or f"merge {source} into {into} ({how})",
        author=author,
        config=target.config,
        lineage=lineage,
    )
    verdict = gate.check(reg.metrics(rev.id, spec), reg.metrics(ours, spec))
    report = {"verdict": verdict.to_dict(), "commit": rev.id, "base": base}
    if not verdict.passed:
        raise MergeConflict(_regressed(source, into, verdict), report)
    entry = reg.refs.update(
        BRANCH, into, rev.id, ours, action="merge", message=rev.message, author=author, extra=report
    )
    return Moved(entry, verdict, rev)


def _regressed(source: str, into: str, verdict: Verdict) -> str:
    return f"merging {source} into {into!r} was refused: " + "; ".join(verdict.reasons)

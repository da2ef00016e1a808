"""Garbage collection of the registry: delete the parameter data nothing needs any more.

Kept (lakeFS's rule, with git's grace period):

- the parameters of every ref's head (branches and tags);
- those of every commit a reflog entry within the retention names (every commit made on a
  branch has such an entry, so recent history stays checkout-able);
- those of commits a caller pins (the commits live runs started from);
- anything younger than the grace period (a commit may be writing its parameters now).

Everything else is deleted: parameter objects and their pointers, their cached eval reports,
commit records that no kept commit descends through, and objects that no pointer names (a
writer that crashed). Commit records of kept history stay (they are small), so ``log`` still
shows an old commit whose parameters are gone; reading them says they were collected.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cluster_app import config
from cluster_app.versions.names import KINDS
from cluster_app.versions.registry import Registry

__all__ = ["GCReport", "collect"]


@dataclass
class GCReport:
    """What a collection deleted (or, dry, would delete)."""

    dry_run: bool
    kept_params: int = 0
    kept_bytes: int = 0
    deleted_params: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    deleted_commits: list[str] = field(default_factory=list)
    deleted_objects: list[str] = field(default_factory=list)  # orphans no pointer names

    def summary(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "kept_params": self.kept_params,
            "kept_bytes": self.kept_bytes,
            "deleted_params": len(self.deleted_params),
            "deleted_bytes": self.deleted_bytes,
            "deleted_commits": len(self.deleted_commits),
            "deleted_objects": len(self.deleted_objects),
        }


def _pinned(reg: Registry, cutoff: float, pins: Iterable[str]) -> set[str]:
    keep = {reg.resolve(p) for p in pins}
    for kind in KINDS:
        for name in reg.refs.names(kind, include_deleted=True):
            log = reg.refs.log(kind, name)
            if log and log[-1].target is not None:
                keep.add(log[-1].target)
            keep.update(e.target for e in log if e.target is not None and e.time >= cutoff)
    return keep


def collect(
    reg: Registry,
    *,
    dry_run: bool = False,
    retention_days: float | None = None,
    grace_seconds: float | None = None,
    pins: Iterable[str] = (),
) -> GCReport:
    """Delete what nothing needs (see the module docstring); ``dry_run`` only lists it."""
    now = time.time()
    retention = config.get("versions.reflog-retention-days", retention_days) * 86400.0
    grace = config.get("versions.gc-grace-seconds", grace_seconds)
    pinned = _pinned(reg, now - retention, pins)
    history: set[str] = set()
    for cid in pinned:
        history |= reg.ancestors(cid)
    needed = {reg.get(c).params for c in pinned}
    report = GCReport(dry_run=dry_run)
    named: set[str] = set()
    for d in reg.objects.digests():
        pointer = reg.objects.pointer(d)
        if pointer is None:
            continue
        named.add(pointer["object"])
        young = now - float(pointer.get("created", now)) < grace
        if d in needed or young:
            report.kept_params += 1
            report.kept_bytes += int(pointer.get("nbytes", 0))
            continue
        report.deleted_params.append(d)
        report.deleted_bytes += int(pointer.get("nbytes", 0))
        if not dry_run:
            reg.objects.delete(d)
            for cached in reg.fs.glob(f"{reg.root}/evals/{d}-*.json"):
                reg.fs.rm(cached)
    for path in reg.fs.glob(f"{reg.root}/commits/*/*.json"):
        cid = path.rsplit("/", 1)[-1][:-5]
        if cid not in history and now - reg.get(cid).time >= grace:
            report.deleted_commits.append(cid)
            if not dry_run:
                reg.fs.rm(path)
    io = reg.objects.io
    for path in (
        reg.fs.ls(f"{reg.root}/objects", detail=False)
        if reg.fs.exists(f"{reg.root}/objects")
        else []
    ):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        seal = io.seal(name)
        if name in named or not name.startswith("params-"):
            continue
        if seal is not None and now - float(seal.get("sealed", now)) < grace:
            continue
        if seal is None and now - _modified(reg, path, now) < grace:
            continue  # still being written
        report.deleted_objects.append(name)
        report.deleted_bytes += int(seal["nbytes"]) if seal else 0
        if not dry_run:
            io.delete(name)
    return report


def _modified(reg: Registry, path: str, default: float) -> float:
    try:
        return reg.fs.modified(path).timestamp()
    except (NotImplementedError, OSError, AttributeError):
        return default

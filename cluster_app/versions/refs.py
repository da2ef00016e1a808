"""Refs (branches and tags) as append-only logs of exclusively created entries.

Layout under the registry's root::

    refs/<kind>/<quoted name>/<seq:012d>.json   entry ``seq`` of the ref's log
    refs/<kind>/<quoted name>/head.json         a hint: the newest seq its writer saw

An update that expects head ``H`` at entry ``n`` creates entry ``n + 1`` *exclusively*
(:func:`~cluster_app.sync.exclusive.create_exclusive`: ``os.link`` on a local disk, a
conditional PUT on object storage). Of two writers that read the same head, exactly one
creates ``n + 1``; the other gets :class:`~cluster_app.errors.RefConflict`. That is
compare-and-swap with no lock and no server, and the log of entries *is* the reflog, complete
by construction: no update can be lost or overwritten.

Finding the head costs O(1), whatever the length of the log: read the hint (``n``), then step
forward while entry ``n + 1`` exists (writers update the hint after their create, so it lags
by at most the updates in flight). A missing or damaged hint falls back to one listing. A
deleted ref's last entry has no target.
"""

from __future__ import annotations

import getpass
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

from cluster_app.errors import CommitConflict, CorruptData, RefConflict
from cluster_app.sync.exclusive import create_exclusive, replace_atomic
from cluster_app.versions.names import KINDS, check_ref_name

__all__ = ["ANY", "RefEntry", "RefStore", "default_author"]

ANY = object()  # ``expected=ANY``: move the ref whatever its head (still one exclusive entry)
_HINT = "head.json"


def default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


@dataclass(frozen=True)
class RefEntry:
    """One entry of a ref's log: the ref pointed at ``target`` from ``time`` on."""

    kind: str  # "heads" (a branch) or "tags"
    name: str
    seq: int
    target: str | None  # a commit id; None when the ref was deleted
    previous: str | None
    action: str  # commit, branch, tag, promote, rollback, merge, fast-forward, delete, ...
    message: str = ""
    author: str = ""
    time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # a gate's verdict, a merge's report


class RefStore:
    """The branches and tags under ``<root>/refs`` of ``fs``."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, f"{root}/refs"
        # called with each entry once it is written (Versions reports moves to the scheduler)
        self.listeners: list[Callable[[RefEntry], None]] = []

    def _dir(self, kind: str, name: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"ref kind {kind!r} is not one of {KINDS}")
        return f"{self.root}/{kind}/{urllib.parse.quote(name, safe='')}"

    def _read(self, path: str) -> dict | None:
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptData(f"ref log entry {path} is not valid JSON: {e}") from e

    def _entry(self, kind: str, name: str, seq: int) -> RefEntry | None:
        raw = self._read(f"{self._dir(kind, name)}/{seq:012d}.json")
        return None if raw is None else RefEntry(**raw)

    def _listed_seqs(self, kind: str, name: str) -> list[int]:
        d = self._dir(kind, name)
        self.fs.invalidate_cache(d)
        try:
            names = self.fs.ls(d, detail=False)
        except FileNotFoundError:
            return []
        tail = [n.rsplit("/", 1)[-1] for n in names]
        return sorted(int(t[:-5]) for t in tail if t.endswith(".json") and t[:-5].isdigit())

    def head(self, kind: str, name: str) -> RefEntry | None:
        """The newest entry of the ref (None if it never existed). O(1) reads."""
        try:
            hint = self._read(f"{self._dir(kind, name)}/{_HINT}")
            seq = int(hint["seq"]) if hint else 0
        except (CorruptData, KeyError, TypeError, ValueError):
            seq = 0
        entry = self._entry(kind, name, seq) if seq else None
        if entry is None:  # no hint (an old or damaged one, or no ref): one listing
            seqs = self._listed_seqs(kind, name)
            seq = seqs[-1] if seqs else 0
            entry = self._entry(kind, name, seq) if seq else None
        while (nxt := self._entry(kind, name, seq + 1)) is not None:
            seq, entry = seq + 1, nxt
        return entry

    def target(self, kind: str, name: str) -> str | None:
        """The commit the ref points at (None if it does not exist or was deleted)."""
        entry = self.head(kind, name)
        return None if entry is None else entry.target

    def update(
        self,
        kind: str,
        name: str,
        target: str | None,
        expected: object,
        *,
        action: str,
        message: str = "",
        author: str | None = None,
        extra: dict | None = None,
    ) -> RefEntry:
        """Point the ref at ``target`` if its head is ``expected`` (None: the ref must not
        exist; :data:`ANY`: whatever it is); :class:`RefConflict` if another writer moved it."""
        check_ref_name(name)
        head = self.head(kind, name)
        current = None if head is None else head.target
        if expected is not ANY and current != expected:
            raise RefConflict(
                f"{_label(kind)} {name!r} is at {_short(current)}, not {_short(expected)}: "
                "another update moved it; read it again and retry"
            )
        entry = RefEntry(
            kind=kind,
            name=name,
            seq=(0 if head is None else head.seq) + 1,
            target=target,
            previous=current,
            action=action,
            message=message,
            author=author if author is not None else default_author(),
            time=time.time(),
            extra=dict(extra or {}),
        )
        d = self._dir(kind, name)
        self.fs.makedirs(d, exist_ok=True)
        try:
            create_exclusive(
                self.fs, f"{d}/{entry.seq:012d}.json", json.dumps(asdict(entry)).encode()
            )
        except CommitConflict as e:
            raise RefConflict(
                f"{_label(kind)} {name!r} moved while it was being updated (entry {entry.seq} "
                "exists); read it again and retry"
            ) from e
        replace_atomic(self.fs, f"{d}/{_HINT}", json.dumps({"seq": entry.seq}).encode())
        for listener in self.listeners:
            listener(entry)
        return entry

    def log(self, kind: str, name: str) -> list[RefEntry]:
        """Every entry of the ref, oldest first (its complete reflog)."""
        out = []
        for seq in self._listed_seqs(kind, name):
            entry = self._entry(kind, name, seq)
            if entry is not None:
                out.append(entry)
        return out

    def names(self, kind: str, include_deleted: bool = False) -> list[str]:
        """The refs of ``kind``, sorted (deleted ones only with ``include_deleted``)."""
        base = f"{self.root}/{kind}"
        self.fs.invalidate_cache(base)
        try:
            dirs = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = sorted(urllib.parse.unquote(d.rstrip("/").rsplit("/", 1)[-1]) for d in dirs)
        return [n for n in names if include_deleted or self.target(kind, n) is not None]


def _label(kind: str) -> str:
    return "branch" if kind == "heads" else "tag"


def _short(commit: object) -> str:
    if commit is None:
        return "nothing (no such ref)"
    return str(commit)[:12]

"""``ParamStore``: immutable parameter versions on zarr v3, made visible by exclusive commits.

Layout under the store's root URL (a local directory or any fsspec URL, e.g. ``s3://bucket/x``)::

    objects/<name>/...            zarr groups, one array per pytree leaf (see ``objects.py``)
    seals/<name>.json             written after an object's data: it is complete, and its size
    commits/<version:012d>.json   the commit record: which object holds version n, its parent,
                                  kind ("full" snapshot or compressed "delta" from the parent),
                                  for a snapshot optionally also the delta from its parent,
                                  leaf shapes and dtypes, the SHA-256 digest of the parameters
                                  the version stands for, and free-form metadata

A version becomes visible only when its commit record is created *exclusively*: ``os.link`` of
a finished temp file on a local disk, a conditional ``If-None-Match: *`` PUT on object storage.
Exactly one writer can create ``commits/n``; the others get :class:`CommitConflict` (optimistic
concurrency control) and their objects are garbage. A writer that dies before its commit leaves
nothing visible, and a record is never seen half-written, so readers never see a torn version.

A "delta" version stores only the compressed change from its parent; reading it walks back to
the nearest "full" snapshot (or to a version the caller already holds) and adds the decoded
deltas, so agents that follow every version pull only compressed deltas. A snapshot committed
with the delta from its parent (the coordinator's periodic snapshots are) is reached the same
way by a reader that holds the parent: it reads the small delta, not the whole snapshot, and gets
the snapshot's parameters bit for bit (the digest proves it). Whatever path a read
takes, the parameters it returns are checked against the commit's digest (end-to-end: a chunk
checksum cannot catch a wrong or missing delta in a chain); a caller that already holds
parameters with the version's digest reads nothing.

This module imports zarr and fsspec only; it knows nothing about JAX or Dask.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import fsspec
import numpy as np

from cluster_app.errors import CommitConflict, CorruptData, StoreError, VersionNotFound
from cluster_app.sync.codecs import Encoded
from cluster_app.sync.congestion import WindowedExecutor
from cluster_app.sync.exclusive import create_exclusive
from cluster_app.sync.objects import ObjectIO
from cluster_app.sync.tree import digest

__all__ = ["Commit", "ParamStore", "check_finite"]

logger = logging.getLogger(__name__)
_COMMITS = "commits"


@dataclass(frozen=True)
class Commit:
    """The record that makes a version visible."""

    version: int
    object: str
    parent: int | None
    kind: str = "full"
    codec: str = "fp32"
    nbytes: int = 0
    leaves: dict[str, list] = field(default_factory=dict)  # path -> [shape, dtype]
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    digest: str | None = None  # SHA-256 of the parameters this version stands for
    # a snapshot's compressed delta from its parent: {"object", "codec", "nbytes"} (or None)
    delta: dict[str, Any] | None = None

    @property
    def written(self) -> int:
        """Stored bytes of everything this commit wrote (the snapshot and its delta)."""
        return self.nbytes + (self.delta["nbytes"] if self.delta else 0)


class ParamStore:
    """Versioned parameters at ``url`` (a local path or fsspec URL).

    Parameters
    ----------
    url : str
        Root of the store; created if missing.
    storage_options : dict, optional
        Passed to fsspec / zarr for remote URLs (credentials, ``endpoint_url``).
    chunk_elems : int
        Target number of elements per zarr chunk (along the first axis).
    executor : WindowedExecutor, optional
        Runs chunk writes under an AIMD concurrency window (shared across writes).
    wrap_store : callable, optional
        ``wrap_store(zarr_store) -> zarr_store``: a layer under the objects (tests use it to
        make the store slow or faulty).

    Attributes
    ----------
    bytes_written, bytes_read : int
        Exact bytes this handle moved through the store: the stored objects it wrote and read
        (data and zarr metadata) and the commit records it created and read. Seals (~55-byte
        markers) and directory listings are not counted.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict | None = None,
        chunk_elems: int = 1 << 18,
        executor: WindowedExecutor | None = None,
        wrap_store=None,
    ) -> None:
        self.url = str(url).rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.fs.makedirs(f"{self.root}/{_COMMITS}", exist_ok=True)
        self.objects = ObjectIO(
            self.url,
            self.fs,
            self.root,
            self.storage_options,
            chunk_elems=chunk_elems,
            executor=executor,
            wrap_store=wrap_store,
        )
        self.bytes_written = 0
        self.bytes_read = 0
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None  # last version read

    def __repr__(self) -> str:
        return f"ParamStore({self.url!r})"

    # ---------------------------------------------------------------- objects
    def put_object(
        self,
        leaves: Mapping[str, np.ndarray | Encoded],
        kind: str = "delta",
        codec: str = "fp32",
        name: str | None = None,
    ) -> str:
        """Write ``leaves`` as a new immutable, sealed object and return its name.

        The object is invisible to version readers until a commit points at it.
        """
        check_finite(leaves)
        name = name or f"{kind}-{uuid.uuid4().hex}"
        nbytes = self.objects.write(name, leaves, {"kind": kind, "codec": codec})
        self.bytes_written += nbytes
        return name

    def get_object(self, name: str, wait: float = 0.0) -> dict[str, np.ndarray]:
        """Read and decode object ``name``; ``wait`` seconds for an in-flight push to seal it."""
        seal = self.objects.wait_sealed(name, wait) if wait else self.objects.seal(name)
        if seal is None:
            raise StoreError(f"object {name!r} is missing or incomplete in {self.url}")
        flat, _ = self.objects.read_decoded(name)
        self.bytes_read += seal["nbytes"]
        return flat

    def object_nbytes(self, name: str) -> int:
        seal = self.objects.seal(name)
        if seal is None:
            raise StoreError(f"object {name!r} is missing or incomplete in {self.url}")
        return int(seal["nbytes"])

    def delete_object(self, name: str) -> None:
        """Remove an uncommitted object (a consumed delta, a losing writer's data)."""
        if name.startswith("commit-"):
            raise StoreError(f"object {name!r} backs a committed version and is immutable")
        self.objects.delete(name)

    # ---------------------------------------------------------------- commits
    def _commit_path(self, version: int) -> str:
        return f"{self.root}/{_COMMITS}/{version:012d}.json"

    def versions(self) -> list[int]:
        """All committed version numbers, ascending."""
        self.fs.invalidate_cache(f"{self.root}/{_COMMITS}")
        names = self.fs.ls(f"{self.root}/{_COMMITS}", detail=False)
        return sorted(int(os.path.basename(n)[:-5]) for n in names if n.endswith(".json"))

    def latest(self) -> int | None:
        """The newest committed version, or None for an empty store."""
        v = self.versions()
        return v[-1] if v else None

    def record(self, version: int) -> Commit:
        """The commit record of ``version``."""
        try:
            raw = self.fs.cat_file(self._commit_path(version))
        except FileNotFoundError as e:
            raise VersionNotFound(f"version {version} is not committed in {self.url}") from e
        self.bytes_read += len(raw)
        return Commit(**json.loads(raw))

    def commit_full(
        self,
        params: dict[str, np.ndarray],
        version: int,
        parent: int | None = None,
        meta: dict | None = None,
        delta: dict[str, np.ndarray | Encoded] | None = None,
        delta_codec: str = "fp32",
    ) -> Commit:
        """Write ``params`` and commit them as snapshot ``version``; :class:`CommitConflict`
        if another writer committed it first.

        ``delta``: also store the (encoded, ``delta_codec``) change from ``parent`` that
        decodes, added to the parent's parameters, to exactly ``params``; a reader holding the
        parent then reads it instead of the snapshot (and the digest check proves the result
        is the snapshot).
        """
        if delta is not None and parent is None:
            raise StoreError("only a full snapshot with a parent can carry a delta")
        return self._commit(params, version, parent, "full", "fp32", meta, None, delta, delta_codec)

    def commit_delta(
        self,
        leaves: dict[str, np.ndarray | Encoded],
        version: int,
        parent: int,
        params_digest: str,
        codec: str = "fp32",
        meta: dict | None = None,
    ) -> Commit:
        """Commit the (``codec``-encoded) change ``leaves`` from committed version ``parent``
        as ``version``; :class:`CommitConflict` if another writer committed it first.

        ``params_digest`` is the :func:`~cluster_app.sync.tree.digest` of the parameters that
        parent + delta decode to (the writer holds them; readers verify their reconstruction
        against it).
        """
        if parent is None:
            raise StoreError("a delta commit needs its parent version")
        return self._commit(leaves, version, parent, "delta", codec, meta, params_digest)

    def _commit(
        self,
        leaves: Mapping[str, np.ndarray | Encoded],
        version: int,
        parent: int | None,
        kind: str,
        codec: str,
        meta: dict | None,
        params_digest: str | None,
        delta: dict[str, np.ndarray | Encoded] | None = None,
        delta_codec: str = "fp32",
    ) -> Commit:
        if self.fs.exists(self._commit_path(version)):  # cheap early exit; the create decides
            raise CommitConflict(f"version {version} already committed in {self.url}")
        with ThreadPoolExecutor(1) as pool:
            # a snapshot's digest is hashed while it is written (hashlib releases the GIL):
            # SHA-256 of 10M parameters is 20-40 ms here, about as long as the write
            # (a snapshot's leaves are plain arrays: commit_full takes nothing else)
            hashing = (
                pool.submit(digest, cast("Mapping[str, np.ndarray]", leaves))
                if kind == "full"
                else None
            )
            # objects behind commits are named commit-*: delete_object refuses them
            name = self.put_object(
                leaves, kind=kind, codec=codec, name=f"commit-{kind}-{uuid.uuid4().hex}"
            )
            if hashing is not None:
                params_digest = hashing.result()
        shortcut = None
        if delta is not None:
            dname = self.put_object(
                delta, kind="delta", codec=delta_codec, name=f"commit-delta-{uuid.uuid4().hex}"
            )
            shortcut = {"object": dname, "codec": delta_codec, "nbytes": self.object_nbytes(dname)}
        shapes = {
            p: [list(v.shape), "float32" if isinstance(v, Encoded) else str(v.dtype)]
            for p, v in leaves.items()
        }
        rec = Commit(
            version=version,
            object=name,
            parent=parent,
            kind=kind,
            codec=codec,
            nbytes=self.object_nbytes(name),
            leaves=shapes,
            meta=dict(meta or {}),
            created=time.time(),
            digest=params_digest,
            delta=shortcut,
        )
        self._create_exclusive(self._commit_path(version), json.dumps(asdict(rec)).encode())
        return rec

    def _create_exclusive(self, path: str, data: bytes) -> None:
        try:
            create_exclusive(self.fs, path, data)
        except CommitConflict as e:
            raise CommitConflict(f"{os.path.basename(path)} already committed") from e
        self.bytes_written += len(data)

    # ---------------------------------------------------------------- reading
    def _read_object(self, rec: Commit, delta: bool = False) -> dict[str, np.ndarray]:
        """The decoded object of ``rec`` (``delta``: a snapshot's delta from its parent)."""
        if delta:
            assert rec.delta is not None  # asked only of a snapshot that carries its delta
            name, nbytes = rec.delta["object"], rec.delta["nbytes"]
        else:
            name, nbytes = rec.object, rec.nbytes
        flat, _ = self.objects.read_decoded(name)
        got = {p: [list(a.shape), str(a.dtype)] for p, a in flat.items()}
        if got != rec.leaves:
            raise CorruptData(
                f"version {rec.version}: object {name!r} does not match its commit record"
            )
        self.bytes_read += nbytes
        return flat

    def _reconstruct(
        self, version: int, known: dict[int, dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], Commit, bool, int | None]:
        """Walk back from ``version`` to a full snapshot or a ``known`` version and apply the
        deltas; returns ``(params, record, read anything, known version started from)``.

        A snapshot that carries the delta from its parent is stepped through (its delta read,
        not the snapshot) when the parent is known."""
        chain: list[Commit] = []  # the commits whose deltas are applied, newest first
        snapshot: Commit | None = None
        v: int | None = version
        while v not in known:
            assert v is not None  # only a snapshot has no parent, and the walk stops there
            rec = self.record(v)
            if rec.kind == "full" and not (rec.delta and rec.parent in known):
                snapshot = rec
                break
            chain.append(rec)
            v = rec.parent
        top = chain[0] if chain else (snapshot or self.record(version))
        if snapshot is None:
            params, start = {k: a.copy() for k, a in known[v].items()}, v
        else:
            params, start = self._read_object(snapshot), None
        read_any = bool(chain) or start is None
        for rec in reversed(chain):
            delta = self._read_object(rec, delta=rec.kind == "full")
            for k in params:
                params[k] += delta[k]
        return params, top, read_any, start

    def read(
        self,
        version: int | None = None,
        have: tuple[int | None, dict[str, np.ndarray]] | None = None,
    ) -> tuple[dict[str, np.ndarray], Commit]:
        """The parameters and commit record of ``version`` (default: the latest).

        ``have=(v, params)``: parameters of an older version the caller holds; if ``version``
        descends from it through delta commits (or snapshots carrying their delta), just those
        deltas are read. ``v=None``:
        parameters of no known version (e.g. freshly initialised); if they have ``version``'s
        digest they are the answer and nothing is read.
        """
        if version is None:
            version = self.latest()
            if version is None:
                raise VersionNotFound(f"no version is committed in {self.url}")
        if have is not None and have[0] is None:
            top = self.record(version)
            if top.digest is not None and digest(have[1]) == top.digest:
                self._cache = (version, {k: np.array(a) for k, a in have[1].items()})
                return {k: np.array(a) for k, a in have[1].items()}, top
            have = None
        # (a held version without a number was settled or dropped above)
        holds = [cast("tuple[int, dict[str, np.ndarray]]", have)] if have is not None else []
        if self._cache is not None:
            holds.append(self._cache)
        try:
            params, top, read_any, start = self._reconstruct(version, dict(holds))
        except CorruptData as e:
            if not holds:
                raise
            # a damaged delta on the short path: the long path (a snapshot) may be intact
            logger.warning("version %d: %s; re-reading without held versions", version, e)
            self._cache = None
            return self.read(version)
        if read_any and top.digest is not None and digest(params) != top.digest:
            if start is None:  # read from the store alone: the store is at fault
                raise CorruptData(
                    f"version {version}: the parameters read back do not match the commit's digest"
                )
            # the copy of version ``start`` we built on was not what the store holds
            logger.warning(
                "version %d built on a held copy of version %d fails its digest; re-reading "
                "from the last full snapshot",
                version,
                start,
            )
            self._cache = None
            return self.read(version)
        self._cache = (version, params)
        return {k: a.copy() for k, a in params.items()}, top

    def read_valid(
        self, before: int | None = None
    ) -> tuple[dict[str, np.ndarray], Commit, list[int]]:
        """The newest version (below ``before``) that reads back intact.

        Returns ``(params, commit, skipped)`` where ``skipped`` lists corrupted versions that were
        passed over (each logged). Raises :class:`VersionNotFound` if none is readable.
        """
        skipped = []
        for v in reversed([x for x in self.versions() if before is None or x < before]):
            try:
                params, rec = self.read(v)
                return params, rec, skipped
            except CorruptData as e:
                logger.warning("version %d is unreadable, falling back: %s", v, e)
                skipped.append(v)
        raise VersionNotFound(f"no readable version in {self.url} (corrupted: {skipped})")


def check_finite(leaves: Mapping[str, np.ndarray | Encoded]) -> None:
    """Raise :class:`CorruptData` naming the first empty, non-array or non-finite leaf."""
    if not leaves:
        raise CorruptData("refusing to store an empty pytree")
    for path, value in leaves.items():
        arrays = (
            [value.q] + ([value.scale] if value.scale is not None else [])
            if isinstance(value, Encoded)
            else [value]
        )
        for a in arrays:
            if not isinstance(a, np.ndarray):
                raise CorruptData(f"leaf {path!r} is a {type(a).__name__}, not a numpy array")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise CorruptData(f"leaf {path!r} contains NaN or Inf")

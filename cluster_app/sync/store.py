"""``ParamStore``: immutable parameter versions on zarr v3, made visible by exclusive commits.

Layout under the store's root URL (a local directory or any fsspec URL)::

    objects/<name>/...             a zarr group, one array per pytree leaf ("blocks/0/qkv/w"),
                                   zstd-compressed and crc32c-checksummed per chunk
    commits/<version:012d>.json    the commit record: which object holds version n, its parent,
                                   leaf shapes and dtypes, and free-form metadata

Writers first write an object under a fresh unique name (invisible to readers), then create the
commit record *exclusively*: ``os.link`` of a finished temp file on a local disk, a conditional
``If-None-Match: *`` PUT on object storage. Exactly one writer can create ``commits/n``: that is
the optimistic concurrency control; the loser gets :class:`CommitConflict` and its object is
garbage. A writer that dies before the commit leaves nothing visible, and a record is never seen
half-written, so readers never see a torn version.

This module imports zarr and fsspec only; it knows nothing about JAX or Dask.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import Crc32cCodec, ZstdCodec

from cluster_app.errors import CommitConflict, CorruptData, StoreError, VersionNotFound

__all__ = ["Commit", "ParamStore"]

_COMMITS = "commits"
_OBJECTS = "objects"


@dataclass(frozen=True)
class Commit:
    """The record that makes a version visible."""

    version: int
    object: str
    parent: int | None
    kind: str = "full"
    leaves: dict[str, list] = field(default_factory=dict)  # path -> [shape, dtype]
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0


class ParamStore:
    """Versioned parameters at ``url`` (a local path or fsspec URL).

    Parameters
    ----------
    url : str
        Root of the store; created if missing.
    storage_options : dict, optional
        Passed to fsspec / zarr for remote URLs (credentials, endpoint).
    chunk_elems : int
        Target number of elements per zarr chunk (along the first axis).
    """

    def __init__(
        self, url: str, storage_options: dict | None = None, chunk_elems: int = 1 << 18
    ) -> None:
        self.url = str(url).rstrip("/")
        self.storage_options = storage_options or {}
        self.chunk_elems = chunk_elems
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.fs.makedirs(f"{self.root}/{_COMMITS}", exist_ok=True)

    def __repr__(self) -> str:
        return f"ParamStore({self.url!r})"

    # ---------------------------------------------------------------- objects
    def _object_url(self, name: str) -> str:
        return f"{self.url}/{_OBJECTS}/{name}"

    def _zarr_kwargs(self) -> dict:
        return {"storage_options": self.storage_options} if "://" in self.url else {}

    def _chunks(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            return ()
        row = int(np.prod(shape[1:], dtype=np.int64)) or 1
        return (max(1, min(shape[0], self.chunk_elems // row)), *shape[1:])

    def put_object(self, flat: dict[str, np.ndarray], kind: str = "delta") -> str:
        """Write ``flat`` as a new object and return its name (invisible until committed)."""
        return self._put(flat, f"{kind}-{uuid.uuid4().hex}")

    def _put(self, flat: dict[str, np.ndarray], name: str) -> str:
        _check_leaves(flat)
        group = zarr.open_group(self._object_url(name), mode="w-", **self._zarr_kwargs())
        for path, value in flat.items():
            arr = group.create_array(
                path,
                shape=value.shape,
                dtype=value.dtype,
                chunks=self._chunks(value.shape),
                compressors=[ZstdCodec(level=1), Crc32cCodec()],
                fill_value=0,
            )
            arr[...] = value
        return name

    def get_object(self, name: str, leaves: dict[str, list] | None = None) -> dict[str, np.ndarray]:
        """Read an object back; checksums are verified chunk by chunk.

        Raises :class:`CorruptData` when a chunk fails its checksum or a leaf does not match
        ``leaves`` (the shapes and dtypes recorded at commit).
        """
        try:
            group = zarr.open_group(self._object_url(name), mode="r", **self._zarr_kwargs())
            out = {
                path: arr[...]
                for path, arr in group.members(max_depth=None)
                if isinstance(arr, zarr.Array)
            }
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"object {name!r} is missing from {self.url}") from e
        except Exception as e:  # zarr raises plain errors from codecs on bad checksums
            raise CorruptData(f"object {name!r} in {self.url} failed to decode: {e}") from e
        if leaves is not None:
            got = {p: [list(a.shape), str(a.dtype)] for p, a in out.items()}
            if got != leaves:
                raise CorruptData(f"object {name!r} does not match its commit record")
        return out

    def delete_object(self, name: str) -> None:
        """Remove an uncommitted object (a consumed delta, a losing writer's data)."""
        if name.startswith("commit-"):
            raise StoreError(f"object {name!r} backs a committed version and is immutable")
        self.fs.rm(f"{self.root}/{_OBJECTS}/{name}", recursive=True)

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
        return Commit(**json.loads(raw))

    def commit(
        self,
        flat: dict[str, np.ndarray],
        version: int,
        parent: int | None = None,
        kind: str = "full",
        meta: dict | None = None,
    ) -> Commit:
        """Write ``flat`` and commit it as ``version``; raise :class:`CommitConflict` if taken."""
        if self.fs.exists(self._commit_path(version)):  # cheap early exit; the link decides
            raise CommitConflict(f"version {version} already committed in {self.url}")
        # objects behind commits are named commit-*: delete_object refuses them
        name = self._put(flat, f"commit-{kind}-{uuid.uuid4().hex}")
        rec = Commit(
            version=version,
            object=name,
            parent=parent,
            kind=kind,
            leaves={p: [list(a.shape), str(a.dtype)] for p, a in flat.items()},
            meta=dict(meta or {}),
            created=time.time(),
        )
        self._create_exclusive(self._commit_path(version), json.dumps(asdict(rec)).encode())
        return rec

    def _create_exclusive(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if path exists
            except FileExistsError as e:
                raise CommitConflict(f"{os.path.basename(path)} already committed") from e
            finally:
                os.unlink(tmp)
            return
        try:
            with self.fs.open(path, "xb") as f:  # conditional PUT (If-None-Match: *)
                f.write(data)
        except FileExistsError as e:
            raise CommitConflict(f"{os.path.basename(path)} already committed") from e

    def read(self, version: int | None = None) -> tuple[dict[str, np.ndarray], Commit]:
        """The parameters and commit record of ``version`` (default: the latest)."""
        if version is None:
            version = self.latest()
            if version is None:
                raise VersionNotFound(f"no version is committed in {self.url}")
        rec = self.record(version)
        return self.get_object(rec.object, rec.leaves), rec


def _check_leaves(flat: dict[str, np.ndarray]) -> None:
    if not flat:
        raise CorruptData("refusing to store an empty pytree")
    for path, value in flat.items():
        if not isinstance(value, np.ndarray):
            raise CorruptData(f"leaf {path!r} is a {type(value).__name__}, not a numpy array")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CorruptData(f"leaf {path!r} contains NaN or Inf")

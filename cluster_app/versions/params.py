"""Parameters of registry commits: one sealed zarr object per distinct set, found by its digest.

Layout under the registry's root::

    objects/params-<digest[:16]>-<uid>/...   a full snapshot: one plain float array per leaf
                                             (opens with ``zarr.open_group``), crc32c per chunk
    seals/<object>.json                      the object is complete, and its size
    params/<digest>.json                     which object holds the parameters of that digest

The pointer ``params/<digest>.json`` is created exclusively after the object is sealed, so
identical parameters are stored once however many commits (or concurrent writers) name them:
a writer that loses the race deletes its own copy. Reads are checked end to end against the
digest (SHA-256 over every leaf's path, dtype, shape and bytes), beside the chunks' checksums.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from cluster_app.errors import CommitConflict, CorruptData, StoreError
from cluster_app.sync.exclusive import create_exclusive
from cluster_app.sync.objects import ObjectIO
from cluster_app.sync.store import check_finite
from cluster_app.sync.tree import digest

__all__ = ["ParamObjects"]


class ParamObjects:
    """Content-addressed parameter snapshots of one registry."""

    def __init__(self, io: ObjectIO) -> None:
        self.io, self.fs, self.root = io, io.fs, io.root
        self.fs.makedirs(f"{self.root}/params", exist_ok=True)

    def _pointer_path(self, params_digest: str) -> str:
        return f"{self.root}/params/{params_digest}.json"

    def pointer(self, params_digest: str) -> dict[str, Any] | None:
        """``{"object", "nbytes", "leaves", "created"}`` of the digest (None: not stored)."""
        try:
            return json.loads(self.fs.cat_file(self._pointer_path(params_digest)))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise CorruptData(f"the pointer of parameters {params_digest[:12]} is damaged") from e

    def put(self, params: dict[str, np.ndarray]) -> tuple[str, dict[str, Any], bool]:
        """Store ``params`` unless stored already: ``(digest, pointer, written)``."""
        check_finite(params)
        params_digest = digest(params)
        found = self.pointer(params_digest)
        if found is not None and self.io.seal(found["object"]) is not None:
            return params_digest, found, False
        name = f"params-{params_digest[:16]}-{uuid.uuid4().hex[:8]}"
        nbytes = self.io.write(name, params, {"kind": "full", "codec": "fp32"})
        pointer = {
            "object": name,
            "nbytes": nbytes,
            "leaves": {p: [list(a.shape), str(a.dtype)] for p, a in params.items()},
            "created": time.time(),
        }
        try:
            create_exclusive(
                self.fs, self._pointer_path(params_digest), json.dumps(pointer).encode()
            )
        except CommitConflict:  # another writer stored the same parameters first: use theirs
            self.io.delete(name)
            return params_digest, self.pointer(params_digest) or pointer, False
        return params_digest, pointer, True

    def get(self, params_digest: str) -> dict[str, np.ndarray]:
        """The parameters of ``params_digest``, verified against it."""
        pointer = self.pointer(params_digest)
        if pointer is None or self.io.seal(pointer["object"]) is None:
            raise StoreError(
                f"parameters {params_digest[:12]} are not in the registry (garbage-collected, "
                "or never written)"
            )
        flat, _ = self.io.read_decoded(pointer["object"])
        if digest(flat) != params_digest:
            raise CorruptData(
                f"parameters {params_digest[:12]} read back do not match their digest "
                f"(object {pointer['object']})"
            )
        return flat

    def digests(self) -> list[str]:
        """Every stored digest."""
        self.fs.invalidate_cache(f"{self.root}/params")
        names = self.fs.ls(f"{self.root}/params", detail=False)
        return sorted(n.rsplit("/", 1)[-1][:-5] for n in names if n.endswith(".json"))

    def delete(self, params_digest: str) -> int:
        """Delete the parameters of ``params_digest`` (pointer first, then the object);
        returns the object's stored bytes."""
        pointer = self.pointer(params_digest)
        if pointer is None:
            return 0
        self.fs.rm(self._pointer_path(params_digest))
        if self.fs.exists(f"{self.root}/objects/{pointer['object']}"):
            self.io.delete(pointer["object"])
        return int(pointer.get("nbytes", 0))

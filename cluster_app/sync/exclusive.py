"""Two atomic writes every durable record here is made of, on a local disk and on object storage.

- :func:`create_exclusive`: create ``path`` only if it does not exist; exactly one of any number
  of concurrent writers succeeds, the others get :class:`~cluster_app.errors.CommitConflict`.
  ``os.link`` of a finished, fsynced temp file on a local disk; a conditional PUT
  (``If-None-Match: *``) on object storage.
- :func:`replace_atomic`: write ``path`` so that a reader sees the old bytes or the new ones,
  never half of either (``os.replace`` of a temp file locally; a single PUT is atomic on
  object storage).

Version commits (``store.py``), seals (``objects.py``) and the registry's commits and refs
(``cluster_app.versions``) are built on these two.
"""

from __future__ import annotations

import os
import uuid
from typing import BinaryIO, cast

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from cluster_app.errors import CommitConflict

__all__ = ["create_exclusive", "replace_atomic"]


def create_exclusive(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` holding ``data``; :class:`CommitConflict` if it exists already."""
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if path exists
        except FileExistsError as e:
            raise CommitConflict(f"{os.path.basename(path)} already exists") from e
        finally:
            os.unlink(tmp)
        return
    try:
        with cast(BinaryIO, fs.open(path, "xb")) as f:  # conditional PUT (If-None-Match: *)
            f.write(data)
    except OSError as e:  # FileExistsError, or s3fs's wrapped PreconditionFailed
        if isinstance(e, FileExistsError) or _precondition_failed(e):
            raise CommitConflict(f"{os.path.basename(path)} already exists") from e
        raise


def replace_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``path`` so that readers see either its old content or ``data``, whole."""
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        fs.pipe_file(tmp, data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)  # one PUT: atomic on object storage


def _precondition_failed(e: BaseException) -> bool:
    code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code")
    return code == "PreconditionFailed" or "PreconditionFailed" in str(e)

"""A continual run's consolidations in its store: what protects the tasks finished so far.

After ``k`` tasks are finished, ``<run>/continual/consolidated-<k>/`` is a zarr group (plain
``zarr.open_group`` reads it) with

- ``replay/x``, ``replay/y``, ``replay/task``: the replay buffer (:class:`ReplayBuffer`);
- ``fisher/<leaf>`` and ``anchor/<leaf>``: EWC's diagonal Fisher (summed over the finished
  tasks: online EWC) and the parameters it anchors to (the version committed at the switch);

and ``<run>/continual/consolidated-<k>.json``, written last and atomically, is its manifest:
what it holds, the Fisher's variant, the version and a SHA-256 of every array. A group without
a manifest is incomplete and never read; an array whose bytes do not match raises
:class:`~cluster_app.errors.CorruptData`. Consolidations are derived data (the reservoir is
seeded, the Fisher is computed at a committed version), so a run that resumes rebuilds a
missing or corrupt one and gets the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal, cast

import fsspec
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from cluster_app.errors import CorruptData, StoreError
from cluster_app.learning.memory import Consolidation
from cluster_app.learning.replay import ReplayBuffer
from cluster_app.sync.exclusive import replace_atomic

__all__ = ["Consolidation", "exists", "load", "save"]


def _paths(run_url: str, k: int) -> tuple[str, str]:
    base = f"{run_url.rstrip('/')}/continual/consolidated-{k}"
    return base, base + ".json"


def _group(url: str, mode: Literal["r", "w"]) -> zarr.Group:
    if "://" in url and not url.startswith("file://"):
        store = FsspecStore.from_url(url, read_only=mode == "r")
    else:
        store = LocalStore(os.path.abspath(url.removeprefix("file://")), read_only=mode == "r")
    return zarr.open_group(store, mode=mode)


def _sha(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _arrays(c: Consolidation) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if c.replay is not None and len(c.replay):
        assert c.replay.x is not None and c.replay.y is not None and c.replay.task is not None
        out.update({"replay/x": c.replay.x, "replay/y": c.replay.y, "replay/task": c.replay.task})
    for kind, tree in (("fisher", c.fisher), ("anchor", c.anchor)):
        out.update({f"{kind}/{k}": v for k, v in (tree or {}).items()})
    return out


def save(run_url: str, c: Consolidation) -> None:
    """Write ``c`` (arrays first, the manifest last); overwrites an incomplete or older one."""
    base, manifest = _paths(run_url, c.tasks)
    arrays = _arrays(c)
    g = _group(base, "w")
    for name, a in arrays.items():
        g.create_array(
            name, data=np.ascontiguousarray(a), compressors=[ZstdCodec(level=3), Crc32cCodec()]
        )
    doc = {
        "tasks": c.tasks,
        "version": c.version,
        "replay": None
        if c.replay is None
        else {"capacity": c.replay.capacity, "seen": c.replay.seen, "held": len(c.replay)},
        "ewc": c.fisher is not None,
        "meta": c.meta,
        "sha256": {name: _sha(a) for name, a in arrays.items()},
    }
    fs, path = fsspec.core.url_to_fs(manifest)
    replace_atomic(fs, path, json.dumps(doc, indent=1, sort_keys=True).encode())


def exists(run_url: str, k: int) -> bool:
    """Whether the consolidation after ``k`` tasks is complete (its manifest exists)."""
    fs, path = fsspec.core.url_to_fs(_paths(run_url, k)[1])
    return fs.exists(path)


def load(run_url: str, k: int) -> Consolidation:
    """The consolidation after ``k`` tasks, every array checked against its manifest."""
    base, manifest = _paths(run_url, k)
    fs, path = fsspec.core.url_to_fs(manifest)
    try:
        doc = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise StoreError(f"{run_url} has no consolidation after {k} task(s)") from None
    except ValueError as e:
        raise CorruptData(f"consolidation manifest {manifest} is not valid JSON: {e}") from None
    g = _group(base, "r")
    arrays = {}
    for name, want in doc["sha256"].items():
        try:
            a = np.asarray(cast(zarr.Array, g[name])[...])
        except Exception as e:  # a missing chunk or a crc32c mismatch
            raise CorruptData(f"consolidation {base}: array {name!r} is unreadable: {e}") from e
        if _sha(a) != want:
            raise CorruptData(f"consolidation {base}: array {name!r} fails its SHA-256")
        arrays[name] = a
    replay = None
    if doc["replay"] is not None:
        replay = ReplayBuffer(doc["replay"]["capacity"], seen=doc["replay"]["seen"])
        if "replay/x" in arrays:
            replay.x, replay.y, replay.task = (arrays[f"replay/{n}"] for n in ("x", "y", "task"))

    def tree(kind: str) -> dict[str, np.ndarray] | None:
        if not doc["ewc"]:
            return None
        return {k[len(kind) + 1 :]: v for k, v in arrays.items() if k.startswith(kind + "/")}

    return Consolidation(
        doc["tasks"], doc["version"], replay, tree("fisher"), tree("anchor"), doc["meta"]
    )

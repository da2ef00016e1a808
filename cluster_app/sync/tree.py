"""Nested-dict pytrees <-> flat ``{"a/b/c": array}`` dicts, without JAX.

Models keep parameters as nested dicts with string keys (see ``agent/models.py``), so a
slash-joined path names every leaf; the store writes one zarr array per path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cluster_app.errors import SpecError

__all__ = ["digest", "flatten", "map_flat", "unflatten"]


def digest(flat: Mapping[str, np.ndarray]) -> str:
    """A SHA-256 fingerprint of a flat pytree: every path, dtype, shape and value byte.

    Commit records carry the digest of the parameters their version stands for, so a reader
    verifies what it reconstructed end to end, and a caller already holding those exact
    parameters (an agent that built version 0 from the same seed) need not read them at all.
    """
    h = hashlib.sha256()  # ~2 GB/s here (SHA extensions): 20 ms for 10M float32 parameters
    for path in sorted(flat):
        a = np.ascontiguousarray(flat[path])
        h.update(f"{path}:{a.dtype.str}:{a.shape};".encode())
        # numpy's stubs give ndarray ``__buffer__`` only for Python >= 3.12 (it has it on all)
        h.update(memoryview(a).cast("B"))  # pyright: ignore[reportArgumentType]
    return h.hexdigest()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> flat dict of numpy arrays keyed by ``"a/b/c"`` paths (sorted)."""
    out: dict[str, np.ndarray] = {}
    for key in sorted(tree):
        if "/" in key:
            raise SpecError(f"pytree key {key!r} may not contain '/'")
        path = f"{prefix}{key}"
        value = tree[key]
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"a/b/c": leaf}`` -> nested dict."""
    root: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = root
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return root


def map_flat(fn, *flats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply ``fn`` leaf-wise over flat dicts with identical keys."""
    keys = flats[0].keys()
    for f in flats[1:]:
        if f.keys() != keys:
            raise SpecError(f"pytree keys differ: {sorted(set(keys) ^ set(f.keys()))}")
    return {k: fn(*(f[k] for f in flats)) for k in keys}

"""Three-way weight merges: two models' changes from their common ancestor, combined.

- ``soup``: the uniform model soup (Wortsman et al. 2022): ``base + (da + db) / 2``, the
  average of the two models.
- ``ties``: TIES merging (Yadav et al. 2023) of the two changes: trim each to its ``density``
  share of largest-magnitude entries (per leaf), elect each entry's sign by the sum of the
  trimmed changes, and average the entries that agree with it.

Pure numpy. Whether a merge is kept is the registry's business: its eval must be no worse.
"""

from __future__ import annotations

import numpy as np

from cluster_app.errors import SpecError

__all__ = ["MERGES", "merge_params"]

MERGES = ("soup", "ties")


def _trim(delta: np.ndarray, density: float) -> np.ndarray:
    """``delta`` with all but its ``density`` share of largest-magnitude entries zeroed."""
    k = int(np.ceil(density * delta.size))
    if k >= delta.size:
        return delta
    flat = np.abs(delta).ravel()
    cut = np.partition(flat, delta.size - k)[delta.size - k]
    return np.where(np.abs(delta) >= cut, delta, 0.0).astype(delta.dtype)


def _ties(da: np.ndarray, db: np.ndarray, density: float) -> np.ndarray:
    ta, tb = _trim(da, density), _trim(db, density)
    sign = np.sign(ta + tb)
    agree_a = (np.sign(ta) == sign) & (ta != 0)
    agree_b = (np.sign(tb) == sign) & (tb != 0)
    count = agree_a.astype(np.float32) + agree_b
    total = np.where(agree_a, ta, 0.0) + np.where(agree_b, tb, 0.0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(da.dtype)


def merge_params(
    base: dict[str, np.ndarray],
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    method: str = "soup",
    density: float = 0.2,
) -> dict[str, np.ndarray]:
    """Merge ``a`` and ``b``, both descended from ``base``, by ``method``."""
    if method not in MERGES:
        raise SpecError(f"unknown merge method {method!r}; choose one of {MERGES}")
    if not 0 < density <= 1:
        raise SpecError(f"density={density} must be in (0, 1]")
    if not (set(base) == set(a) == set(b)):
        raise SpecError("the two models and their ancestor do not have the same leaves")
    out = {}
    for k, w in base.items():
        if not (w.shape == a[k].shape == b[k].shape):
            raise SpecError(
                f"leaf {k!r} has different shapes: {w.shape}, {a[k].shape}, {b[k].shape}"
            )
        da, db = a[k] - w, b[k] - w
        change = (da + db) / 2 if method == "soup" else _ties(da, db, density)
        out[k] = (w + change).astype(w.dtype)
    return out

"""What changed between two versions: their training config, each layer's weights, their eval."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["config_diff", "eval_diff", "layer_changes"]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list]:
    """``{dotted key: [a's value, b's value]}`` for every key whose value differs."""
    fa, fb = _flat(a), _flat(b)
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def layer_changes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per leaf: the L2 norm of ``b - a``, that norm relative to ``a``'s, the largest entry
    change. Leaves in only one of the two are reported with ``"only"``."""
    out: dict[str, dict] = {}
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b or a[k].shape != b[k].shape:
            out[k] = {"only": "a" if k not in b else "b" if k not in a else "shape differs"}
            continue
        d = b[k].astype(np.float64) - a[k]
        norm, base = float(np.linalg.norm(d)), float(np.linalg.norm(a[k]))
        out[k] = {
            "l2": norm,
            "relative": norm / base if base else None,  # (a zero leaf: no scale to compare to)
            "max_abs": float(np.abs(d).max()) if d.size else 0.0,
        }
    return out


def eval_diff(a: dict[str, float], b: dict[str, float]) -> dict[str, list]:
    """``{metric: [a, b, b - a]}`` over the metrics both reports hold."""
    return {m: [a[m], b[m], b[m] - a[m]] for m in sorted(set(a) & set(b))}

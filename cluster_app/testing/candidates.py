"""Candidate versions for A/B tests and canaries: a committed model, nudged or made worse."""

from __future__ import annotations

import numpy as np

from cluster_app.versions.commits import Revision
from cluster_app.versions.registry import Registry

__all__ = ["commit_noisy"]


def commit_noisy(
    reg: Registry, base: Revision, scales: dict[str, float], seed: int = 0
) -> dict[str, Revision]:
    """For each ``{branch: scale}``, commit ``base``'s parameters plus Gaussian noise of that
    standard deviation to the branch (``1e-4``: a near twin; ``0.5``: made worse on purpose)."""
    params = reg.params(base.id)
    rng = np.random.default_rng(seed)
    out = {}
    for branch, scale in scales.items():
        changed = {
            k: x + rng.normal(0, scale, x.shape).astype(np.float32) for k, x in params.items()
        }
        out[branch] = reg.commit(
            changed,
            branch=branch,
            config=base.config,
            message=f"{base.short} + noise {scale:g}",
            evaluate=False,
        )
    return out

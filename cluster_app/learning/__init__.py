"""Continual learning on the fleet: incremental, transfer and lifelong runs (system S6).

The plain-data parts are importable anywhere (no JAX): :class:`ContinualSpec` and
:class:`Task` (what a run learns, in order), the standard workloads (:func:`split_digits`,
:func:`permuted_digits`, :func:`joint`, :func:`code_domains`), :class:`ReplayBuffer`,
the store's consolidations (:mod:`~cluster_app.learning.consolidation`) and the evaluation
report (:func:`report`). The JAX parts (``ewc``: the exact Fisher and the penalty; ``step``:
the continual train step) are imported by the agents on the workers. See docs/continual.md.
"""

from cluster_app.learning.replay import ReplayBuffer
from cluster_app.learning.report import accuracy_matrix, report
from cluster_app.learning.spec import (
    ContinualSpec,
    RoundPlan,
    Task,
    code_domains,
    joint,
    permuted_digits,
    split_digits,
)

__all__ = [
    "ContinualSpec",
    "ReplayBuffer",
    "RoundPlan",
    "Task",
    "accuracy_matrix",
    "code_domains",
    "joint",
    "permuted_digits",
    "report",
    "split_digits",
]

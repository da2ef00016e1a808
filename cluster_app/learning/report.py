"""A continual run's evaluation, measured the way the literature measures it.

From the run's per-round evaluations on every task seen so far (``RoundRecord.task_eval``, in
the run record's history), with ``T`` tasks and ``R[i][j]`` the metric on task ``j`` at the
end of task ``i`` (its last evaluation; a prior task's row is the evaluation at the start):

- **average accuracy**: the mean of ``R[T-1][j]`` over every task;
- **backward transfer** (Lopez-Paz & Ranzato 2017): the mean over ``j < T-1`` of
  ``R[T-1][j] - R[j][j]`` (negative: forgetting);
- **forgetting** (Chaudhry et al. 2018): the mean over ``j < T-1`` of the best earlier value
  ``max_{j <= i < T-1} R[i][j]`` less the final ``R[T-1][j]``;
- **stability gap** (De Lange et al. 2023): after each switch to task ``i``, the lowest mean
  metric on tasks ``< i`` over the evaluations during task ``i``, beside its value right
  before the switch.

The metric is accuracy for classifiers; for the code model it is held-out loss, where lower
is better: its "forgetting" is then the rise in loss (final less best).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["accuracy_matrix", "history_report", "report"]


def _metric(rows: Sequence[dict]) -> str:
    return "accuracy" if rows and all("accuracy" in t for t in rows) else "loss"


def _evals(history: Sequence[dict]) -> list[dict]:
    return [h for h in history if h.get("task_eval")]


def accuracy_matrix(
    history: Sequence[dict], n_tasks: int, first_task: int = 0, start: Sequence[dict] | None = None
) -> tuple[np.ndarray, str]:
    """``R`` (tasks x tasks, NaN where not evaluated) and the metric it holds.

    Row ``i`` is the last evaluation while task ``i`` trained; rows of prior tasks (below
    ``first_task``) are the start evaluation ``start``."""
    evals = _evals(history)
    metric = _metric([t for h in evals for t in h["task_eval"]] or list(start or []))
    r = np.full((n_tasks, n_tasks), np.nan)
    for i in range(first_task):
        for t in start or []:
            r[i, t["task"]] = t[metric]
    for h in evals:  # in round order: the last evaluation of each task wins
        for t in h["task_eval"]:
            r[h["task"], t["task"]] = t[metric]
    return r, metric


def report(
    history: Sequence[dict], n_tasks: int, first_task: int = 0, start=None
) -> dict[str, Any]:
    """Average accuracy, backward transfer, forgetting and the stability gap (docstring)."""
    r, metric = accuracy_matrix(history, n_tasks, first_task, start)
    sign = 1.0 if metric == "accuracy" else -1.0  # forgetting is a fall in accuracy, a rise in loss
    last = r[n_tasks - 1]
    old = range(n_tasks - 1)
    bwt = [last[j] - r[j, j] for j in old if not np.isnan(r[j, j])]
    forgetting = []
    for j in old:
        col = r[j : n_tasks - 1, j]
        col = col[~np.isnan(col)]
        if len(col):
            best = col.max() if sign > 0 else col.min()
            forgetting.append(sign * (best - last[j]))
    evals = _evals(history)
    gaps = []
    for i in range(max(first_task, 1), n_tasks):
        during = [
            float(np.mean([t[metric] for t in h["task_eval"] if t["task"] < i]))
            for h in evals
            if h["task"] == i
        ]
        before = r[i - 1, :i]
        if during and not np.isnan(before).all():
            worst = min(during) if sign > 0 else max(during)
            gaps.append(
                {
                    "task": i,
                    "before": float(np.nanmean(before)),
                    "min": worst,
                    "evaluations": len(during),
                }
            )
    return {
        "metric": metric,
        "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in r],
        "average": float(np.nanmean(last)),
        "backward_transfer": float(np.mean(bwt)) if bwt else None,
        "forgetting": float(np.mean(forgetting)) if forgetting else None,
        "min_after_switch": [g["min"] for g in gaps],
        "stability_gap": gaps,
    }


def history_report(history: Sequence[dict], start: Sequence[dict] | None = None) -> dict | None:
    """:func:`report` of a run's recorded rounds (``RoundRecord.history()`` entries), over the
    tasks they trained; None when none trained a task (not a continual run)."""
    seen = [h for h in history if h.get("task") is not None]
    if not seen:
        return None
    tasks = [h["task"] for h in seen]
    return report(seen, max(tasks) + 1, min(tasks), start)

"""The evaluation spec and the eval gate: one definition of "better", for promotion, merges and
the serving canary.

:class:`EvalSpec` says how a version is evaluated (``cluster_app.agent.evaluate`` computes it):

- ``heldout_loss`` (lower is better): mean cross-entropy on held-out batches, for either model;
- ``accuracy`` (digits; higher is better): top-1 on the held-out split;
- ``char_accuracy`` and ``exact_match`` (code; higher is better): greedy next-character
  accuracy on held-out code, and the share of held-out windows whose last
  ``completion_chars`` characters a greedy completion of the preceding code reproduces exactly.

:class:`Gate` is MLflow's ``MetricThreshold`` over one metric: a ``threshold`` the candidate must
meet, and a minimum absolute or relative improvement over the baseline. With neither change
given, a candidate may not be worse than the baseline: ``min_absolute_change=0``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from cluster_app import config
from cluster_app.config import setting
from cluster_app.errors import SpecError

__all__ = ["METRICS", "EvalSpec", "Gate", "Verdict"]

# each metric's better direction: "min" (lower is better) or "max"
METRICS = {"heldout_loss": "min", "accuracy": "max", "char_accuracy": "max", "exact_match": "max"}


@dataclass(frozen=True)
class EvalSpec:
    """How versions are evaluated (the same batches for every version: comparisons are paired)."""

    batches: int = setting("versions.eval.batches")
    batch_size: int = setting("versions.eval.batch-size")
    completion_chars: int = setting("versions.eval.completion-chars")

    def __post_init__(self) -> None:
        config.check(self)

    @classmethod
    def from_config(cls, **overrides) -> EvalSpec:
        """From ``cluster-app.versions.eval.*``; keywords win."""
        return cls(**config.from_config(cls, overrides, what="eval spec field"))

    def key(self) -> str:
        """A short hash naming this spec (reports are cached under it)."""
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:12]


@dataclass(frozen=True)
class Verdict:
    """What a gate decided about a candidate against a baseline, and why."""

    passed: bool
    metric: str
    candidate: float
    baseline: float | None
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Gate:
    """A candidate must meet ``threshold`` (if set) and improve on the baseline by at least
    ``min_absolute_change`` and ``min_relative_change`` (a fraction of the baseline's value)."""

    metric: str = setting("versions.gate.metric")
    threshold: float | None = setting("versions.gate.threshold")
    min_absolute_change: float | None = setting("versions.gate.min-absolute-change")
    min_relative_change: float | None = setting("versions.gate.min-relative-change")
    extra: dict = field(default_factory=dict, compare=False)  # free-form, recorded with verdicts

    def __post_init__(self) -> None:
        config.check(self)
        if self.metric not in METRICS:
            raise SpecError(f"unknown gate metric {self.metric!r}; choose one of {sorted(METRICS)}")

    @classmethod
    def from_config(cls, **overrides) -> Gate:
        """From ``cluster-app.versions.gate.*``; keywords win."""
        return cls(**config.from_config(cls, overrides, extra=("extra",), what="gate field"))

    def check(self, candidate: dict[str, float], baseline: dict[str, float] | None) -> Verdict:
        """Judge ``candidate``'s metrics against ``baseline``'s (None: nothing to beat)."""
        m = self.metric
        if m not in candidate:
            raise SpecError(
                f"the candidate's eval report has no {m!r} (it has {sorted(candidate)})"
            )
        sign = 1.0 if METRICS[m] == "max" else -1.0  # improvements are positive
        value = float(candidate[m])
        base = None if baseline is None or m not in baseline else float(baseline[m])
        reasons = []
        if not math.isfinite(value):
            reasons.append(f"{m} is {value}")
        if self.threshold is not None and sign * (value - self.threshold) < 0:
            bound = ">=" if sign > 0 else "<="
            reasons.append(f"{m} {value:.6g} misses the threshold {bound} {self.threshold:.6g}")
        if base is not None:
            gain = sign * (value - base)
            need_abs = self.min_absolute_change
            if need_abs is None and self.min_relative_change is None:
                need_abs = 0.0  # not worse than the baseline
            if need_abs is not None and gain < need_abs:
                reasons.append(
                    f"{m} {value:.6g} vs baseline {base:.6g}: improves by {gain:.6g}, "
                    f"needs >= {need_abs:.6g}"
                )
            rel = self.min_relative_change
            if rel is not None and gain < rel * abs(base):
                reasons.append(
                    f"{m} {value:.6g} vs baseline {base:.6g}: improves by "
                    f"{gain / abs(base) if base else math.inf:.3%}, needs >= {rel:.3%}"
                )
        return Verdict(not reasons, m, value, base, tuple(reasons))

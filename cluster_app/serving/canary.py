"""The live canary: judge a split's candidates against its baseline, and roll back on breach.

A candidate breaches when, on the current split:

- its error rate exceeds ``max_error_rate`` (once both arms have ``min_requests``);
- its p99 latency exceeds ``max_p99_ratio`` times the baseline's (once both arms have
  ``min_latency_requests``: the p99 of fewer than 100 samples is their maximum, and one slow
  request must not roll a version back);
- or it fails the **same gate the offline promotion uses** (:class:`~cluster_app.versions.Gate`
  on ``heldout_loss``, the eval spec's metric) with ``min_relative_change =
  -max_quality_regression``, both arms scored on the same logged prompts (paired).

:func:`judge` is pure; the gateway runs it every ``check_every`` seconds and rolls back.
"""

from __future__ import annotations

from cluster_app.serving.metrics import ArmStats
from cluster_app.serving.spec import ServeSpec
from cluster_app.versions.gate import Gate

__all__ = ["judge", "quality_gate"]


def quality_gate(spec: ServeSpec) -> Gate:
    return Gate(metric="heldout_loss", min_relative_change=-spec.max_quality_regression)


def judge(
    spec: ServeSpec,
    baseline: ArmStats,
    candidate: ArmStats,
    quality: tuple[float, float] | None = None,
) -> list[str]:
    """Reasons the candidate breaches (empty: it does not). ``quality``: the (baseline,
    candidate) heldout_loss on the same logged prompts, when scored."""
    reasons = []
    if quality is not None:
        verdict = quality_gate(spec).check(
            {"heldout_loss": quality[1]}, {"heldout_loss": quality[0]}
        )
        if not verdict.passed:
            reasons += [f"quality: {r}" for r in verdict.reasons]
    if min(baseline.requests, candidate.requests) < spec.min_requests:
        return reasons
    if candidate.error_rate > spec.max_error_rate:
        reasons.append(
            f"error rate {candidate.error_rate:.1%} > {spec.max_error_rate:.1%} "
            f"({candidate.errors} of {candidate.requests})"
        )
    if min(baseline.requests, candidate.requests) < spec.min_latency_requests:
        return reasons
    base_p99, cand_p99 = baseline.percentile(99), candidate.percentile(99)
    if cand_p99 > spec.max_p99_ratio * max(base_p99, 0.01):
        reasons.append(
            f"p99 {cand_p99 * 1e3:.0f} ms > {spec.max_p99_ratio:g}x the baseline's "
            f"{base_p99 * 1e3:.0f} ms"
        )
    return reasons

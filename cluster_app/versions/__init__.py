"""The model registry (system S8; ``docs/versions.md``): git-like versions on the store.

Map (storage only: nothing here imports JAX or Dask; evaluation is handed in)::

    names.py     ref names, checked by git check-ref-format's rules
    refs.py      RefStore: branches and tags as exclusively created log entries (CAS + reflog)
    commits.py   Revision: an immutable, content-addressed commit record
    params.py    ParamObjects: one sealed zarr snapshot per parameters digest
    gate.py      EvalSpec (how versions are evaluated) and Gate (MLflow MetricThreshold)
    diff.py      config diff, per-layer change norms, eval deltas
    merge.py     three-way weight merges: model soup, TIES
    registry.py  Registry: commit, resolve, log, show, diff, branch, tag, eval reports
    ops.py       promote (gated), rollback, fast-forward, merge (kept only if no worse)
    gc.py        collect: delete parameter data no ref, recent reflog entry or live run needs
"""

from cluster_app.versions.gate import EvalSpec, Gate, Verdict
from cluster_app.versions.registry import Registry

__all__ = ["EvalSpec", "Gate", "Registry", "Verdict"]

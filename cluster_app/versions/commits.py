"""Registry commits: immutable, content-addressed records of one model version.

A commit's id is the SHA-256 of its canonical JSON (sorted keys, no whitespace) without the id:
the parameters' digest, the parents, the training config, the data lineage, the eval report,
the message, the author and the time. It is stored at ``commits/<id[:2]>/<id>.json``, created
exclusively, and checked against its id on every read: a damaged record is detected, not
believed. The parameters themselves are referenced by digest (``params.py``): a commit pins a
full snapshot, never a delta chain, so it stays readable after its run's store is gone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Revision", "commit_id"]


@dataclass(frozen=True)
class Revision:
    """One commit of the registry."""

    id: str
    params: str  # SHA-256 digest of the parameters (their object is found by it)
    parents: tuple[str, ...]
    message: str
    author: str
    time: float
    config: dict[str, Any] = field(default_factory=dict)  # the run spec that trained it
    lineage: dict[str, Any] = field(default_factory=dict)  # corpus, shards, run id, round, ...
    eval: dict[str, Any] = field(default_factory=dict)  # {"spec": ..., "metrics": {...}}
    leaves: dict[str, list] = field(default_factory=dict)  # path -> [shape, dtype]
    nbytes: int = 0  # stored bytes of the parameters

    @property
    def short(self) -> str:
        """The first 12 characters of the commit id."""
        return self.id[:12]

    @property
    def metrics(self) -> dict[str, float]:
        """The commit's eval report: metric name -> value."""
        return dict(self.eval.get("metrics", {}))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Revision:
        d = json.loads(raw)
        d["parents"] = tuple(d["parents"])
        return cls(**d)


def commit_id(fields: dict[str, Any]) -> str:
    """The id of a commit with ``fields`` (every field but ``id``)."""
    body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if k != "id"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()

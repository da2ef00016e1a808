"""Traffic splits: weighted, sticky per user, with an optional shadow. Pure data and hashing.

A :class:`Split` names its arms (registry refs resolved to commits when the split is set) with
weights, and at most one shadow arm that sees a copy of the traffic and whose answers are never
returned. A user lands on the arm where ``hash(split id, user)``, read as a number in [0, 1),
falls among the cumulative weights: the same user stays on the same arm for the split's life,
and a new split (a second canary) reshuffles from scratch. Requests without a user are spread
by a random draw.

A split is persisted as JSON (``Split.to_dict``) in the store, so it survives a gateway
restart; ``state`` is ``active`` or ``rolled_back`` (all traffic on the baseline, the event
recorded).
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

from cluster_app.errors import SpecError

__all__ = ["Arm", "Split", "choose"]


@dataclass(frozen=True)
class Arm:
    """One side of a split: a registry ref, the commit it resolved to, its traffic weight."""

    ref: str
    commit: str
    weight: float
    params: str = ""  # the commit's parameters digest
    config: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Split:
    """A traffic split between arms (the first is the baseline), and an optional shadow."""

    arms: tuple[Arm, ...]
    shadow: Arm | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "active"  # active | rolled_back
    created: float = field(default_factory=time.time)
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.arms:
            raise SpecError("a split needs at least one arm")
        if any(a.weight < 0 for a in self.arms) or sum(a.weight for a in self.arms) <= 0:
            raise SpecError("split weights must be >= 0 and not all zero")
        names = [a.ref for a in self.arms]
        if len(set(names)) != len(names):
            raise SpecError(f"a ref appears twice in the split: {names}")

    @property
    def baseline(self) -> Arm:
        """The first arm: what candidates are judged against."""
        return self.arms[0]

    @property
    def candidates(self) -> tuple[Arm, ...]:
        """Every arm but the baseline."""
        return self.arms[1:]

    def rolled_back(self, reason: str) -> Split:
        """This split with every request on the baseline (the candidate's weight 0)."""
        arms = (
            replace(self.baseline, weight=1.0),
            *tuple(replace(a, weight=0.0) for a in self.candidates),
        )
        return replace(self, arms=arms, shadow=None, state="rolled_back", reason=reason)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        d = dict(d)
        d["arms"] = tuple(Arm(**a) for a in d["arms"])
        d["shadow"] = Arm(**d["shadow"]) if d.get("shadow") else None
        return cls(**d)


def _unit(split_id: str, user: str) -> float:
    h = hashlib.sha256(f"{split_id}\0{user}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def choose(split: Split, user: str | None, rng: random.Random | None = None) -> Arm:
    """The arm a request of ``user`` goes to (sticky per user within ``split``)."""
    u = _unit(split.id, user) if user else (rng or random).random()
    total = sum(a.weight for a in split.arms)
    acc = 0.0
    for arm in split.arms:
        acc += arm.weight / total
        if u < acc:
            return arm
    return next(a for a in reversed(split.arms) if a.weight > 0)

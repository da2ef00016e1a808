"""The outer (global) optimiser of two-level, DiLoCo-style training, built from optax.

Agents return parameter deltas ``theta_agent - theta_global`` after their local steps. The outer
"gradient" is the negated (staleness-weighted) mean delta; an optax optimiser turns it into the
global update. ``sgd(lr=1)`` is plain averaging; DiLoCo's recipe is Nesterov momentum,
``sgd(lr=0.7, momentum=0.9, nesterov=True)``. State is an explicit pytree (:class:`OuterState`)
so it can be checkpointed with the rest of a run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cluster_app.errors import SpecError

__all__ = ["OUTER_OPTIMIZERS", "OuterOptimizer", "OuterState", "staleness_weight"]

# the outer optimisers by name: (outer learning rate, momentum) -> an optax transformation
# applied to the averaged delta (``average`` with rate 1.0 is plain averaging)
OUTER_OPTIMIZERS = {
    "average": lambda lr, momentum: optax.sgd(lr),
    "nesterov": lambda lr, momentum: optax.sgd(lr, momentum=momentum, nesterov=True),
}


class OuterState(NamedTuple):
    """The outer optimiser's state and how many outer steps it has taken."""

    step: int
    opt_state: Any


def staleness_weight(staleness: int, max_staleness: int) -> float:
    """Weight of a delta computed ``staleness`` versions ago: ``1 / (1 + s)``; 0 past the bound."""
    if staleness < 0:
        raise SpecError(f"staleness={staleness} must be >= 0")
    return 0.0 if staleness > max_staleness else 1.0 / (1.0 + staleness)


class OuterOptimizer:
    """``apply(params, deltas, weights) -> new params`` with an optax transformation.

    Parameters
    ----------
    name : {"average", "nesterov"}
    learning_rate : float
    momentum : float
        Nesterov momentum (ignored by ``"average"``).
    """

    def __init__(
        self, name: str = "average", learning_rate: float = 1.0, momentum: float = 0.9
    ) -> None:
        if name not in OUTER_OPTIMIZERS:
            raise SpecError(
                f"unknown outer optimizer {name!r}; choose one of {', '.join(OUTER_OPTIMIZERS)}"
            )
        self.tx = OUTER_OPTIMIZERS[name](learning_rate, momentum)
        self.name = name
        self._update = jax.jit(self.tx.update)

    def init(self, params: dict[str, np.ndarray]) -> OuterState:
        return OuterState(0, self.tx.init({k: jnp.asarray(v) for k, v in params.items()}))

    def apply(
        self,
        params: dict[str, np.ndarray],
        deltas: list[dict[str, np.ndarray]],
        weights: list[float],
        state: OuterState,
    ) -> tuple[dict[str, np.ndarray], OuterState]:
        """One outer step from ``sum(w_i * delta_i) / n``: a stale delta (w < 1) counts less."""
        if not deltas:
            return params, state
        n = len(deltas)
        grad = {
            k: jnp.asarray(
                -sum(w * d[k].astype(np.float64) for d, w in zip(deltas, weights)) / n, jnp.float32
            )
            for k in params
        }
        updates, opt_state = self._update(grad, state.opt_state)
        new = {k: np.asarray(params[k] + updates[k], np.float32) for k in params}
        return new, OuterState(state.step + 1, opt_state)

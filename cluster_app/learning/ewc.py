"""Elastic weight consolidation: the diagonal Fisher, computed per example, and its penalty.

The Fisher information of a classifier at parameters ``θ`` is

    F = E_x [ Σ_c p_θ(c | x) (∇_θ log p_θ(c | x))² ]

(diagonal, element-wise square). ``variant="exact"`` computes exactly that: for each example
the Jacobian of the log-probabilities over every class (``jax.jacrev``), weighted by the
model's own probabilities, with examples batched by ``jax.vmap``. ``"empirical"`` uses the
label's gradient instead of the expectation (``(∇ log p(y | x))²``), what many EWC
implementations do and a 2025 study (van de Ven, "On the computation of the Fisher
Information in continual learning") finds clearly worse. The variant is recorded with each
consolidation. In the task-incremental scenario the classes outside an example's task are
masked out of its softmax, exactly as in training.

The exact Fisher sums over every output of an example; for the code model that is every
character of every position (98 x 64 backward passes an example), so there it is refused and
``"empirical"`` (the gradient of the example's own sequence loss) is the variant to use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from cluster_app.errors import SpecError

if TYPE_CHECKING:
    from cluster_app.agent.models import Model

__all__ = ["MASKED", "fisher", "masked_logits", "penalty"]

MASKED = -1e9  # the logit of a class outside the example's task


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    return logits if mask is None else jnp.where(mask, logits, MASKED)


def penalty(params: Any, fisher: Any, anchor: Any) -> jax.Array:
    """``Σ F (θ - θ*)²`` over every leaf (EWC's quadratic penalty, without the λ / 2)."""
    terms = jax.tree.map(lambda p, f, a: jnp.sum(f * (p - a) ** 2), params, fisher, anchor)
    return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def _log_probs(model: Model, params: Any, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return jax.nn.log_softmax(masked_logits(model.apply(params, x[None])[0], mask))


def fisher(
    model: Model,
    params: Any,
    x: np.ndarray,
    y: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    variant: str = "exact",
    chunk: int = 64,
) -> Any:
    """The diagonal Fisher of ``model`` at ``params`` over examples ``x`` (a pytree like
    ``params``); ``y`` is needed by ``"empirical"``, ``mask`` (examples x classes, bool)
    restricts each example's softmax to its task's classes."""
    if variant not in ("exact", "empirical"):
        raise SpecError(f"fisher variant {variant!r}; choose exact or empirical")
    if variant == "exact" and model.name != "mlp":
        raise SpecError(
            f"the exact Fisher of the {model.name} model sums over every output of every "
            "position; use fisher='empirical' for it"
        )
    if variant == "empirical" and y is None:
        raise SpecError("the empirical Fisher needs the labels y")

    def exact_one(xi, mi):
        logp = _log_probs(model, params, xi, mi)
        jac = jax.jacrev(lambda p: _log_probs(model, p, xi, mi))(params)  # leaves: (C, *shape)
        w = jnp.exp(logp)
        return jax.tree.map(lambda j: jnp.tensordot(w, j**2, axes=1), jac)

    def empirical_one(xi, yi, mi):
        def nll(p):
            logits = masked_logits(model.apply(p, xi[None])[0], mi)
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, yi[..., None], axis=-1).mean()

        return jax.tree.map(jnp.square, jax.grad(nll)(params))

    if variant == "exact":
        per_chunk = jax.jit(jax.vmap(exact_one, in_axes=(0, None if mask is None else 0)))
    else:
        per_chunk = jax.jit(jax.vmap(empirical_one, in_axes=(0, 0, None if mask is None else 0)))
    total, n = None, len(x)
    for lo in range(0, n, chunk):
        xs = jnp.asarray(x[lo : lo + chunk])
        ms = None if mask is None else jnp.asarray(mask[lo : lo + chunk])
        args = (xs, ms) if variant == "exact" else (xs, jnp.asarray(y[lo : lo + chunk]), ms)  # type: ignore[index]
        part = jax.tree.map(lambda a: a.sum(0), per_chunk(*args))
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return jax.tree.map(lambda a: a / n, total)

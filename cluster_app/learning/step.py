"""The continual train step: masked cross-entropy, the EWC penalty, an explicit learning rate.

``step(state, x, y, mask, lr, ewc) -> (state, metrics)``, jitted, the state donated:

- ``mask`` (examples x classes, bool, or None): the task-incremental head; each example's
  softmax covers its own task's classes only (a replayed example keeps its task's mask);
- ``ewc`` (None, or ``{"fisher", "anchor", "lam"}``): adds ``lam / 2 * Σ F (θ - θ*)²``;
- ``lr``: the inner rate of this step (the run's schedule times the re-warm-up), set on the
  optimiser's injected hyperparameter (``optax.inject_hyperparams``).

The optimiser may be an ``optax.multi_transform`` that freezes or down-weights leaves
(``agent/continual.py`` builds it); the step does not care.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from cluster_app.learning.ewc import masked_logits, penalty

if TYPE_CHECKING:
    from cluster_app.agent.models import Model

__all__ = ["cross_entropy", "make_continual_step", "make_task_eval"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()


def _loss(model: Model, params, x, y, mask, ewc) -> tuple[jax.Array, dict]:
    ce = cross_entropy(masked_logits(model.apply(params, x), mask), y)
    if ewc is None:
        return ce, {"ce": ce, "penalty": jnp.zeros((), jnp.float32)}
    pen = penalty(params, ewc["fisher"], ewc["anchor"])
    return ce + 0.5 * ewc["lam"] * pen, {"ce": ce, "penalty": pen}


def make_continual_step(model: Model, tx: optax.GradientTransformation) -> Callable:
    def step(state, x, y, mask, lr, ewc):
        (loss, m), grads = jax.value_and_grad(
            lambda p: _loss(model, p, x, y, mask, ewc), has_aux=True
        )(state.params)
        opt_state = state.opt_state
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state), {
            "loss": loss,
            **m,
        }

    return jax.jit(step, donate_argnums=0)


def make_task_eval(model: Model) -> Callable[[Any, Any, Any, Any], dict]:
    """``eval(params, x, y, mask) -> {"loss", "accuracy"?}`` (accuracy for classifiers)."""

    def ev(params, x, y, mask):
        logits = masked_logits(model.apply(params, x), mask)
        out = {"loss": cross_entropy(logits, y)}
        if logits.ndim == 2:
            out["accuracy"] = (logits.argmax(-1) == y).mean()
        return out

    return jax.jit(ev)

"""Training state as an explicit pytree and the jitted pure steps that advance it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from cluster_app.agent.models import Model
from cluster_app.errors import SpecError

__all__ = ["TrainState", "make_eval_step", "make_optimizer", "make_train_step"]


class TrainState(NamedTuple):
    """Everything one agent's inner optimisation needs: ``step``, ``params``, ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        return cls(
            step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params)
        )


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The inner (per-agent) optimiser, with global-norm clipping at 1.0."""
    makers = {
        "adamw": lambda: optax.adamw(learning_rate, weight_decay=1e-4),
        "adam": lambda: optax.adam(learning_rate),
        "sgd": lambda: optax.sgd(learning_rate, momentum=0.9),
    }
    if name not in makers:
        raise SpecError(f"unknown optimizer {name!r}; choose one of {', '.join(sorted(makers))}")
    return optax.chain(optax.clip_by_global_norm(1.0), makers[name]())


def make_train_step(
    model: Model, tx: optax.GradientTransformation
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``, jitted, with the state buffers donated."""

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), {"loss": loss, **metrics}

    return jax.jit(step, donate_argnums=0)


def make_eval_step(model: Model) -> Callable[[Any, Any], dict]:
    """``eval_step(params, batch) -> metrics`` (jitted)."""

    def eval_step(params: Any, batch: Any) -> dict:
        loss, metrics = model.loss(params, batch)
        return {"loss": loss, **metrics}

    return jax.jit(eval_step)

"""Training state as an explicit pytree and the jitted pure steps that advance it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from cluster_app.agent.models import Model
from cluster_app.errors import SpecError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainState",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
]

SCHEDULES = ("constant", "cosine", "wsd")


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


# the inner optimisers by name: learning rate (a float or an injected hyperparameter) -> optax
OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
    "adam": lambda lr: optax.adam(lr),
    "sgd": lambda lr: optax.sgd(lr, momentum=0.9),
}


def make_optimizer(
    name: str, learning_rate: float, scheduled: bool = False
) -> optax.GradientTransformation:
    """The inner (per-agent) optimiser, with global-norm clipping at 1.0.

    ``scheduled`` makes its learning rate an injected hyperparameter
    (``optax.inject_hyperparams``) that a train step sets from a schedule of the run's global
    step (see :func:`make_train_step`); a constant rate stays a plain constant, so it compiles
    and rounds exactly as it always has."""
    if name not in OPTIMIZERS:
        raise SpecError(
            f"unknown optimizer {name!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        )

    def chain(learning_rate):  # (inject_hyperparams reads the argument's name)
        return optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](learning_rate))

    return (
        optax.inject_hyperparams(chain)(learning_rate=learning_rate)
        if scheduled
        else chain(learning_rate)
    )


def make_schedule(
    learning_rate: float,
    kind: str = "constant",
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    end_fraction: float = 0.0,
    cooldown: float = 0.2,
) -> optax.Schedule | None:
    """The inner learning rate as a function of the run's global local step, or None for a
    constant rate without warmup (the optimiser's own rate is then used as it is).

    Every kind starts with a linear warmup from 0 over ``warmup_steps`` (if any); then

    - ``"constant"``: flat, for a run without an end (a perpetual one);
    - ``"cosine"``: a cosine down to ``end_fraction * learning_rate`` at ``decay_steps``
      (counted from step 0), DiLoCo's inner schedule;
    - ``"wsd"`` (warmup-stable-decay): flat, then a linear cooldown to
      ``end_fraction * learning_rate`` over the last ``cooldown`` fraction of
      ``decay_steps``: a constant-rate run that anneals for a release or at the end of a
      fixed budget (Hagele et al., 2024, "Scaling laws and compute-optimal training beyond
      fixed training durations").
    """
    if kind not in SCHEDULES:
        raise SpecError(f"unknown lr schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if kind != "constant" and (decay_steps is None or decay_steps <= warmup_steps):
        raise SpecError(
            f"a {kind} schedule needs decay_steps (got {decay_steps}) > warmup_steps "
            f"({warmup_steps})"
        )
    parts, bounds = [], []
    if warmup_steps:
        parts.append(optax.linear_schedule(0.0, learning_rate, warmup_steps))
        bounds.append(warmup_steps)
    if kind == "constant":
        if not parts:
            return None
        parts.append(optax.constant_schedule(learning_rate))
    elif kind == "cosine":
        assert decay_steps is not None  # checked above for every kind but "constant"
        parts.append(
            optax.cosine_decay_schedule(learning_rate, decay_steps - warmup_steps, end_fraction)
        )
    else:
        assert decay_steps is not None  # checked above for every kind but "constant"
        n = max(1, round(cooldown * decay_steps))
        if decay_steps - n < warmup_steps:
            raise SpecError(
                f"a cooldown of {n} steps does not fit after {warmup_steps} warmup steps in "
                f"decay_steps={decay_steps}"
            )
        if decay_steps - n > warmup_steps:
            parts.append(optax.constant_schedule(learning_rate))
            bounds.append(decay_steps - n)
        parts.append(optax.linear_schedule(learning_rate, end_fraction * learning_rate, n))
    return optax.join_schedules(parts, bounds) if bounds else parts[0]


def make_train_step(
    model: Model, tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """``step(state, batch, t) -> (state, metrics)``, jitted, with the state buffers donated.

    ``t`` is the run's global local step (an int32 scalar); with a ``schedule`` the step
    sets the injected learning rate of ``tx`` (``make_optimizer(..., scheduled=True)``) to
    ``schedule(t)`` before updating, and reports it as ``metrics["learning_rate"]``. The
    schedule follows the run, not the agent's optimiser state: an agent that joins or
    replaces another mid-run trains at the run's current rate, not from the top of a warmup.
    """

    def step(state: TrainState, batch: Any, t: jax.Array) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(state.params, batch)
        opt_state, metrics = state.opt_state, {"loss": loss, **metrics}
        if schedule is not None:
            lr = jax.numpy.asarray(schedule(t), jax.numpy.float32)
            opt_state = opt_state._replace(
                hyperparams={**opt_state.hyperparams, "learning_rate": lr}
            )
            metrics["learning_rate"] = lr
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def make_eval_step(model: Model) -> Callable[[Any, Any], dict]:
    """``eval_step(params, batch) -> metrics`` (jitted)."""

    def eval_step(params: Any, batch: Any) -> dict:
        loss, metrics = model.loss(params, batch)
        return {"loss": loss, **metrics}

    return jax.jit(eval_step)

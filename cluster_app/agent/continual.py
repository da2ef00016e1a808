"""An agent's continual-learning side: task data, replay, EWC, frozen leaves, re-warm-up.

:class:`ContinualTrainer` is held by an :class:`~cluster_app.agent.agent.Agent` and runs the
local steps of a round that has a :class:`~cluster_app.learning.spec.RoundPlan`:

- batches come from the plan's task (``data.task_dataset``); with replay, the last
  ``replay_fraction`` of each batch are drawn from the run's replay buffer;
- the step is :func:`~cluster_app.learning.step.make_continual_step`: masked heads for the
  task-incremental scenario, the EWC penalty when the run has one;
- the optimiser is the agent's own (clipped, by name) inside an ``optax.multi_transform`` that
  gives frozen leaves ``optax.set_to_zero`` (they stay bit-identical) and down-weighted ones
  ``optax.scale``; its state is kept across rounds like the agent's, and re-initialised when
  the partition changes (at ``unfreeze_after``);
- the inner rate is the run's schedule times the plan's re-warm-up factor.

It also builds consolidations (replay buffer + Fisher + anchor, at a committed version) and
evaluates every task seen so far, for the run loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cluster_app.agent.data import task_dataset
from cluster_app.agent.state import OPTIMIZERS, TrainState
from cluster_app.errors import SpecError
from cluster_app.learning.ewc import fisher
from cluster_app.learning.memory import Consolidation
from cluster_app.learning.replay import ReplayBuffer
from cluster_app.learning.spec import ContinualSpec, RoundPlan, matches
from cluster_app.learning.step import make_continual_step, make_task_eval
from cluster_app.sync.tree import flatten, unflatten

if TYPE_CHECKING:
    from cluster_app.agent.agent import Agent

__all__ = ["ContinualTrainer", "param_labels"]

# a replay stream of the code corpus (windows are unbounded): this many per buffer slot
CODE_STREAM_PER_SLOT = 20


def param_labels(params: Any, freeze: tuple[str, ...], down_weight: tuple[str, ...]) -> Any:
    """``params``' tree with each leaf's partition: ``"frozen"``, ``"slow"`` or ``"train"``."""

    def walk(tree: Any, prefix: str) -> Any:
        if isinstance(tree, dict):
            return {k: walk(v, f"{prefix}/{k}" if prefix else k) for k, v in tree.items()}
        if matches(prefix, freeze):
            return "frozen"
        return "slow" if matches(prefix, down_weight) else "train"

    return walk(params, "")


class ContinualTrainer:
    """The continual rounds, evaluations and consolidations of one agent (module docstring)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.run: str | None = None
        self.key: tuple | None = None  # the optimiser partition the state was built for
        self.opt_state: Any = None
        self._steps: dict[tuple, tuple[optax.GradientTransformation, Any]] = {}
        self._eval = make_task_eval(agent.model)
        self._ewc: tuple[Consolidation, Any] | None = None  # a consolidation's trees, on device

    # ------------------------------------------------------------------ parts
    def dataset(self, data: tuple[dict, ...]):
        spec = self.agent.spec
        return task_dataset(spec.dataset, spec.data_kwargs, data)

    def _optimizer(self, key: tuple) -> tuple[optax.GradientTransformation, Any]:
        if key not in self._steps:
            freeze, down, scale = key
            spec = self.agent.spec
            if spec.optimizer not in OPTIMIZERS:
                raise SpecError(f"unknown optimizer {spec.optimizer!r}")

            def factory(learning_rate):
                def inner():
                    return optax.chain(
                        optax.clip_by_global_norm(1.0), OPTIMIZERS[spec.optimizer](learning_rate)
                    )

                if not freeze and not down:
                    return inner()
                parts = {
                    "train": inner(),
                    "frozen": optax.set_to_zero(),
                    "slow": optax.chain(inner(), optax.scale(scale)),
                }
                return optax.multi_transform(
                    cast(dict, parts), lambda params: param_labels(params, freeze, down)
                )

            tx = optax.inject_hyperparams(factory)(learning_rate=spec.learning_rate)
            self._steps[key] = (tx, make_continual_step(self.agent.model, tx))
        return self._steps[key]

    def _ewc_trees(self, c: Consolidation) -> Any:
        if c.fisher is None or c.anchor is None:
            return None
        if self._ewc is None or self._ewc[0] is not c:
            trees = {
                "fisher": jax.tree.map(jnp.asarray, unflatten(c.fisher)),
                "anchor": jax.tree.map(jnp.asarray, unflatten(c.anchor)),
            }
            self._ewc = (c, trees)
        return self._ewc[1]

    def _masks(self, task_classes: tuple) -> np.ndarray | None:
        """Per task, the classes its head may predict (task-incremental), or None."""
        if not task_classes:
            return None
        n = self.agent.model.config["n_classes"]
        return np.stack([np.isin(np.arange(n), c) for c in task_classes])

    # ------------------------------------------------------------------ a round
    def train(
        self,
        round: int,
        shard: int,
        num_shards: int,
        steps: int,
        plan: RoundPlan,
        memory: Consolidation | None,
    ) -> tuple[list, float]:
        """Run the round's local steps on the agent's state; returns (losses, last rate).
        ``memory`` is the run's consolidation the plan names (replay, Fisher, anchor)."""
        agent = self.agent
        assert agent.state is not None  # Agent.train checks it
        if self.run != agent.run:  # a new run: its own optimiser state
            self.run, self.key, self.opt_state = agent.run, None, None
        key = (plan.freeze, plan.down_weight, plan.down_weight_scale)
        tx, step = self._optimizer(key)
        if self.key != key or self.opt_state is None:
            self.key, self.opt_state = key, tx.init(agent.state.params)
        data = self.dataset(plan.data)
        replay, ewc = None, None
        if plan.consolidated and memory is None:
            raise SpecError(f"round {round} needs the consolidation of {plan.consolidated} tasks")
        if memory is not None:
            if plan.replay_fraction > 0 and memory.replay is not None and len(memory.replay):
                replay = memory.replay
            trees = self._ewc_trees(memory) if plan.ewc_lambda > 0 else None
            if trees is not None:
                ewc = {**trees, "lam": jnp.float32(plan.ewc_lambda)}
        bs = agent.spec.batch_size
        n_replay = min(bs - 1, int(plan.replay_fraction * bs + 0.5)) if replay else 0
        masks = self._masks(plan.task_classes)
        rng = np.random.default_rng([plan.seed, 11, round, shard, num_shards])
        t0 = round * steps
        lrs = [
            agent.rate(t0 + i) * plan.lr_factor(plan.task_round * steps + i) for i in range(steps)
        ]
        state = TrainState(agent.state.step, agent.state.params, self.opt_state)
        plain_opt = agent.state.opt_state
        losses, batches = [], data.batches(round, shard, num_shards, steps, bs, agent.spec.seed)
        for i, (x, y) in enumerate(batches):
            tasks = np.full(len(y), plan.task, np.int32)
            if n_replay:
                assert replay is not None
                rx, ry, rt = replay.sample(n_replay, rng)
                x = np.concatenate([x[: bs - n_replay], rx])
                y = np.concatenate([y[: bs - n_replay], ry])
                tasks = np.concatenate([tasks[: bs - n_replay], rt])
            mask = None if masks is None else masks[tasks]
            state, m = step(state, x, y, mask, np.float32(lrs[i]), ewc)
            losses.append(m["loss"])
        agent.state = TrainState(state.step, state.params, plain_opt)
        self.opt_state = state.opt_state
        return losses, lrs[-1]

    # ------------------------------------------------------------------ for the run loop
    def evaluate(self, cs: ContinualSpec, upto: int, n_batches: int) -> list[dict]:
        """Held-out loss (and accuracy) on each of the first ``upto + 1`` tasks."""
        agent = self.agent
        assert agent.state is not None
        masks = self._masks(cs.task_classes)
        out = []
        for j, task in enumerate(cs.all_tasks[: upto + 1]):
            ms = []
            for x, y in self.dataset(task.data).eval_batches(n_batches, agent.spec.batch_size):
                mask = (
                    None if masks is None else np.broadcast_to(masks[j], (len(y), masks.shape[1]))
                )
                ms.append(jax.device_get(self._eval(agent.state.params, x, y, mask)))
            row = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
            out.append({"task": j, "name": task.name, **row})
        return out

    def consolidate(
        self, cs: ContinualSpec, k: int, version: int, prev: Consolidation | None
    ) -> Consolidation:
        """The consolidation after ``k`` finished tasks at the agent's loaded ``version``:
        ``prev`` (an earlier one, or None) extended by the tasks since. Deterministic."""
        agent = self.agent
        assert agent.state is not None
        start = prev.tasks if prev is not None else 0
        buffer = None
        if cs.replay_size > 0:
            buffer = ReplayBuffer(cs.replay_size)
            if prev is not None and prev.replay is not None:
                buffer = prev.replay.copy()
        total = dict(prev.fisher) if prev is not None and prev.fisher is not None else None
        masks = self._masks(cs.task_classes)
        for t in range(start, k):
            data = self.dataset(cs.all_tasks[t].data)
            if buffer is not None:
                n = getattr(data, "examples", None) or CODE_STREAM_PER_SLOT * cs.replay_size
                xs, ys = data.sample(n, seed=cs.seed * 7919 + t)
                buffer.add(xs, ys, t, np.random.default_rng([cs.seed, 5, t]))
            if cs.ewc_lambda > 0:
                xs, ys = data.sample(cs.fisher_samples, seed=cs.seed * 7919 + 100_003 + t)
                mask = (
                    None if masks is None else np.broadcast_to(masks[t], (len(ys), masks.shape[1]))
                )
                f = flatten(
                    jax.device_get(fisher(agent.model, agent.state.params, xs, ys, mask, cs.fisher))
                )
                total = f if total is None else {p: total[p] + f[p] for p in f}
        anchor = agent.params() if cs.ewc_lambda > 0 else None
        meta = {
            "fisher": cs.fisher if cs.ewc_lambda > 0 else None,
            "ewc": "online: the Fisher summed over finished tasks, anchored at the last"
            if cs.ewc_lambda > 0
            else None,
            "fisher_samples": cs.fisher_samples,
            "replay_counts": buffer.counts() if buffer is not None else None,
        }
        return Consolidation(k, version, buffer, total, anchor, meta)

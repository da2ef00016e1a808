"""One learning agent: a model, its optax state and its data, driven by plain method calls.

An :class:`Agent` lives in one process (a Dask worker holds one through ``worker.py``). It keeps
its inner optimiser state across rounds (DiLoCo-style: only parameters are synchronised) and
reloads parameters whenever the global version it is asked to start from changes. Nothing here
knows about Dask; parameters cross the boundary as flat numpy dicts (``sync/tree.py``).
"""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from cluster_app.agent.continual import ContinualTrainer
from cluster_app.agent.data import decode, encode, load_dataset
from cluster_app.agent.models import make_model
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.state import (
    TrainState,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
)
from cluster_app.errors import SpecError
from cluster_app.learning.memory import Consolidation
from cluster_app.learning.spec import RoundPlan
from cluster_app.sync.codecs import Encoded, get_codec
from cluster_app.sync.tree import flatten, unflatten

__all__ = ["Agent", "AgentSpec"]  # AgentSpec re-exported for convenience


class Agent:
    """A model with its optimiser state and dataset, trained in rounds from global versions."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.data = load_dataset(spec.dataset, **spec.data_kwargs)
        self.model = make_model(spec.model, **{**self.data.model_kwargs(), **spec.model_kwargs})
        # a decaying schedule without a horizon is resolved by the run (RunSpec); until then
        # this agent can warm up and evaluate but not train
        self._unscheduled = spec.lr_schedule != "constant" and spec.decay_steps is None
        self.schedule = None
        if not self._unscheduled:
            self.schedule = make_schedule(
                spec.learning_rate,
                spec.lr_schedule,
                spec.warmup_steps,
                spec.decay_steps,
                spec.lr_end_fraction,
                spec.lr_cooldown,
            )
        self.tx = make_optimizer(
            spec.optimizer, spec.learning_rate, scheduled=self.schedule is not None
        )
        self._train_step = make_train_step(self.model, self.tx, self.schedule)
        self._eval_step = make_eval_step(self.model)
        self._logits = jax.jit(self.model.apply)
        self.state: TrainState | None = None
        self.version: int | None = None
        self.run: str | None = None  # the store URL of the run this agent serves
        self.base: dict[str, np.ndarray] | None = None  # params of self.version, as loaded
        self.base_version: int | None = None
        self.residual: dict[str, np.ndarray] | None = None  # error feedback of lossy pushes
        self.total_steps = 0
        self.rounds = 0
        self.last_steps_per_s = 0.0
        self.busy = False
        self.lock = threading.Lock()
        self._continual: ContinualTrainer | None = None

    @property
    def continual(self) -> ContinualTrainer:
        """Continual rounds, per-task evaluation and consolidation (built when first used)."""
        if self._continual is None:
            self._continual = ContinualTrainer(self)
        return self._continual

    def rate(self, t: int) -> float:
        """The inner learning rate at the run's global local step ``t``."""
        if self.schedule is None:
            return self.spec.learning_rate
        return float(np.asarray(self.schedule(t)))

    def reset(self, run: str | None = None) -> None:
        """Forget everything run-local (parameters, inner optimiser state, residual) and
        remember ``run`` as the run now being served."""
        self.state = None
        self.version = self.base_version = None
        self.base = self.residual = None
        self.run = run

    # ------------------------------------------------------------------ params
    def init_params(self) -> dict[str, np.ndarray]:
        """Fresh parameters from ``spec.seed`` (the same on every agent)."""
        return flatten(self.model.init(jax.random.PRNGKey(self.spec.seed)))

    def load(self, flat: dict[str, np.ndarray], version: int, reset_residual: bool = False) -> None:
        """Adopt global parameters ``flat`` as ``version``; the inner optimiser state is kept.

        ``reset_residual`` drops the error-feedback residual (on a full snapshot reload).
        """
        if reset_residual:
            self.residual = None
        params = jax.tree.map(jnp.asarray, unflatten(flat))
        if self.state is None:
            self.state = TrainState.create(params, self.tx)
        else:
            self.state = self.state._replace(params=params)
        self.base = {k: np.asarray(v) for k, v in flat.items()}
        self.base_version = self.version = version

    def encode(self, delta: dict[str, np.ndarray], codec: str) -> dict[str, Encoded]:
        """Compress ``delta`` with ``codec``, adding and updating the error-feedback residual."""
        c = get_codec(codec)
        residual = self.residual or {}
        out, new_residual = {}, {}
        for k, v in delta.items():
            out[k], r = c.encode(v, residual.get(k))
            if r is not None:
                new_residual[k] = r
        self.residual = new_residual or None
        return out

    def params(self) -> dict[str, np.ndarray]:
        assert self.state is not None  # parameters are loaded first (load())
        return flatten(jax.device_get(self.state.params))

    def prewarm(self) -> float:
        """Compile the train and eval steps on a throwaway state; returns seconds spent."""
        t0 = time.perf_counter()
        params = self.model.init(jax.random.PRNGKey(self.spec.seed))
        state = TrainState.create(params, self.tx)
        x, y = next(self.data.batches(0, 0, 1, 1, self.spec.batch_size, self.spec.seed))
        state, _ = self._train_step(state, (x, y), np.int32(0))
        jax.block_until_ready(self._eval_step(state.params, (x, y)))
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ work
    def train(
        self,
        round: int,
        shard: int,
        num_shards: int,
        steps: int,
        plan: RoundPlan | None = None,
        memory: Consolidation | None = None,
    ) -> tuple[dict[str, np.ndarray], dict]:
        """Run ``steps`` local steps on shard ``shard`` of round ``round``.

        Every round is ``steps`` long, so its first step is the run's global local step
        ``round * steps``: the learning-rate schedule is read there. A continual round
        (``plan``) trains on its task, with the replay and EWC of the run's consolidation
        ``memory`` (:class:`~cluster_app.agent.continual.ContinualTrainer`).
        Returns the parameter delta against the loaded version and a metrics dict.
        """
        if self.state is None:
            raise SpecError("agent has no parameters; load a version first")
        if steps < 1:
            raise SpecError(f"steps={steps} must be a positive integer")
        if self._unscheduled:
            raise SpecError(
                f"lr_schedule={self.spec.lr_schedule!r} needs decay_steps; a run sets it to "
                "rounds * local_steps"
            )
        t0 = time.perf_counter()
        if plan is not None:
            losses, rate = self.continual.train(round, shard, num_shards, steps, plan, memory)
        else:
            losses, rate = self._train_plain(round, shard, num_shards, steps)
        losses = np.asarray(jax.device_get(losses), np.float64)
        dt = time.perf_counter() - t0
        new = self.params()
        assert self.base is not None  # load() sets it with the state checked above
        delta = {k: new[k] - self.base[k] for k in new}
        self.version = None  # the params no longer equal any committed version
        self.total_steps += steps
        self.rounds += 1
        self.last_steps_per_s = steps / dt
        return delta, {
            "loss_first": float(losses[0]),
            "loss_last": float(losses[-1]),
            "loss_mean": float(losses.mean()),
            "seconds": dt,
            "steps": steps,
            "learning_rate": rate,  # the rate of the round's last step
        }

    def _train_plain(self, round: int, shard: int, num_shards: int, steps: int) -> tuple:
        assert self.state is not None  # train() checks it
        losses, state, m = [], self.state, {}
        batches = self.data.batches(
            round, shard, num_shards, steps, self.spec.batch_size, self.spec.seed
        )
        for i, batch in enumerate(batches):
            state, m = self._train_step(state, batch, np.int32(round * steps + i))
            losses.append(m["loss"])
        self.state = state
        return losses, float(m.get("learning_rate", self.spec.learning_rate))

    def evaluate(self, n_batches: int) -> dict:
        """Mean held-out metrics of the current parameters."""
        batches = self.data.eval_batches(n_batches, self.spec.batch_size)
        assert self.state is not None  # parameters are loaded first (load())
        ms = [jax.device_get(self._eval_step(self.state.params, b)) for b in batches]
        out = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
        out["baseline_loss"] = self.data.baseline_loss()
        return out

    def complete(
        self, prompt: str, n_chars: int = 40, temperature: float = 0.0, seed: int = 0
    ) -> str:
        """Continue ``prompt`` by ``n_chars`` characters (greedy when temperature is 0)."""
        if self.spec.model != "codelm":
            raise SpecError(
                f"completion needs the 'codelm' model, this agent has {self.spec.model!r}"
            )
        if n_chars < 0:
            raise SpecError(f"n_chars={n_chars} must be >= 0")
        ctx = self.model.config["context"]
        ids = list(encode(prompt)) or [int(encode("\n")[0])]
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n_chars):
            window = np.asarray(ids[-ctx:], np.int32)
            # pad on the right to one fixed shape; causal attention never looks at the padding
            x = np.zeros((1, ctx), np.int32)
            x[0, : len(window)] = window
            assert self.state is not None  # parameters are loaded first (load())
            logits = np.array(self._logits(self.state.params, x)[0, len(window) - 1])
            logits[0] = -np.inf  # never emit the unknown token
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                p = np.exp((logits - logits.max()) / temperature)
                nxt = int(rng.choice(len(p), p=p / p.sum()))
            ids.append(nxt)
            out.append(nxt)
        return decode(np.asarray(out))

    def metrics(self) -> dict:
        """Small numeric snapshot for the scheduler (``worker.metrics``)."""
        return {
            "version": -1 if self.version is None else self.version,
            "steps": self.total_steps,
            "rounds": self.rounds,
            "steps_per_s": self.last_steps_per_s,
            "busy": int(self.busy),
        }

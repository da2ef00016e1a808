"""``AgentSpec``: what an agent is (model, data, inner optimiser), as plain validated data.

Kept free of JAX so the client and the run controller can build and ship specs without
importing it; the agent that realises a spec lives in ``agent.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cluster_app import config
from cluster_app.errors import SpecError

__all__ = ["MODEL_DATA", "AgentSpec"]

# which dataset each model consumes
MODEL_DATA = {"codelm": "code", "mlp": "digits"}


@dataclass(frozen=True)
class AgentSpec:
    """What an agent is: model, data and inner optimiser. Hashable, picklable, validated."""

    model: str = "codelm"
    dataset: str = "code"
    seed: int = 0
    batch_size: int = 32
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    # the inner learning rate over the run's global local steps (``state.make_schedule``);
    # a decaying schedule's decay_steps of None is set by the run to rounds * local_steps
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    lr_end_fraction: float = 0.0
    lr_cooldown: float = 0.2
    model_kwargs: dict = field(default_factory=dict, hash=False)
    data_kwargs: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        config.check_fields(
            {
                "agent.model": self.model,
                "agent.dataset": self.dataset,
                "agent.seed": self.seed,
                "agent.batch-size": self.batch_size,
                "agent.optimizer": self.optimizer,
                "agent.learning-rate": self.learning_rate,
                "agent.lr-schedule": self.lr_schedule,
                "agent.warmup-steps": self.warmup_steps,
                "agent.decay-steps": self.decay_steps,
                "agent.lr-end-fraction": self.lr_end_fraction,
                "agent.lr-cooldown": self.lr_cooldown,
            }
        )
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise SpecError(
                f"decay_steps={self.decay_steps} must exceed warmup_steps={self.warmup_steps}"
            )
        if MODEL_DATA[self.model] != self.dataset:
            raise SpecError(
                f"model {self.model!r} trains on dataset "
                f"{MODEL_DATA[self.model]!r}, not {self.dataset!r}"
            )

    @classmethod
    def from_config(cls, **overrides: Any) -> AgentSpec:
        """Build a spec from ``cluster-app.agent.*`` / ``data.*`` config; keywords win."""
        model = overrides.pop("model", None) or config.get("agent.model")
        dataset = overrides.pop("dataset", None) or MODEL_DATA.get(
            model, config.get("agent.dataset")
        )
        if model == "codelm":
            mk = {
                "context": config.get("agent.codelm.context"),
                "d_model": config.get("agent.codelm.d-model"),
                "n_layers": config.get("agent.codelm.n-layers"),
                "n_heads": config.get("agent.codelm.n-heads"),
            }
            dk = {
                "context": mk["context"],
                "max_train_chars": config.get("data.code.max-train-chars"),
                "max_eval_chars": config.get("data.code.max-eval-chars"),
                "holdout_every": config.get("data.code.holdout-every"),
            }
        else:
            mk = {
                "hidden": config.get("agent.mlp.hidden"),
                "n_layers": config.get("agent.mlp.n-layers"),
            }
            dk = {}
        mk.update(overrides.pop("model_kwargs", {}) or {})
        dk.update(overrides.pop("data_kwargs", {}) or {})
        base = {
            "seed": config.get("agent.seed"),
            "batch_size": config.get("agent.batch-size"),
            "optimizer": config.get("agent.optimizer"),
            "learning_rate": config.get("agent.learning-rate"),
            "lr_schedule": config.get("agent.lr-schedule"),
            "warmup_steps": config.get("agent.warmup-steps"),
            "decay_steps": config.get("agent.decay-steps"),
            "lr_end_fraction": config.get("agent.lr-end-fraction"),
            "lr_cooldown": config.get("agent.lr-cooldown"),
        }
        unknown = set(overrides) - set(base)
        if unknown:
            raise SpecError(f"unknown agent field(s) {sorted(unknown)}; valid: {sorted(base)}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, dataset=dataset, model_kwargs=mk, data_kwargs=dk, **base)

    def key(self) -> tuple:
        """A hashable identity including the size dicts."""
        d = asdict(self)
        return tuple(
            (k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
            for k, v in sorted(d.items())
        )

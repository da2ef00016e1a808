"""``AgentSpec``: what an agent is (model, data, inner optimiser), as plain validated data.

Kept free of JAX so the client and the run controller can build and ship specs without
importing it; the agent that realises a spec lives in ``agent.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cluster_app import config
from cluster_app.config import setting
from cluster_app.errors import SpecError

__all__ = ["BATCH_BUCKETS", "MODEL_DATA", "AgentSpec", "size_kwargs"]

# completion batches are padded up to one of these sizes (``generate.py``; the gateway warms them)
BATCH_BUCKETS = (1, 4, 16, 64, 256)

# which dataset each model consumes
MODEL_DATA = {"codelm": "code", "mlp": "digits"}


def size_kwargs(model: str) -> tuple[dict, dict]:
    """The configured sizes of ``model`` and of its dataset: ``(model_kwargs, data_kwargs)``.

    ``cluster-app.agent.<model>.*`` gives the model's keyword arguments (``d-model`` ->
    ``d_model``); the code dataset's window is the model's context. An unknown model has
    none (the spec built with it names the valid models).
    """
    if model not in MODEL_DATA:
        return {}, {}
    mk = config.get(f"agent.{model}")
    dk = config.get("data.code") if MODEL_DATA[model] == "code" else {}
    if "context" in mk:
        dk["context"] = mk["context"]
    return mk, dk


@dataclass(frozen=True)
class AgentSpec:
    """What an agent is: model, data and inner optimiser. Hashable, picklable, validated."""

    model: str = setting("agent.model")
    dataset: str = setting("agent.dataset")
    seed: int = setting("agent.seed")
    batch_size: int = setting("agent.batch-size")
    optimizer: str = setting("agent.optimizer")
    learning_rate: float = setting("agent.learning-rate")
    # the inner learning rate over the run's global local steps (``state.make_schedule``);
    # a decaying schedule's decay_steps of None is set by the run to rounds * local_steps
    lr_schedule: str = setting("agent.lr-schedule")
    warmup_steps: int = setting("agent.warmup-steps")
    decay_steps: int | None = setting("agent.decay-steps")
    lr_end_fraction: float = setting("agent.lr-end-fraction")
    lr_cooldown: float = setting("agent.lr-cooldown")
    # the model's and the dataset's sizes: ``cluster-app.agent.<model>.*`` and ``data.<dataset>.*``
    # (see :func:`size_kwargs`); empty means the factories' own defaults
    model_kwargs: dict = field(default_factory=dict, hash=False)
    data_kwargs: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        config.check(self)
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
        """Build a spec from ``cluster-app.agent.*`` / ``data.*`` config; keywords win.

        The dataset follows the model; the size dicts given are merged over the configured
        sizes of that model (:func:`size_kwargs`).
        """
        model = overrides.pop("model", None) or config.get("agent.model")
        dataset = overrides.pop("dataset", None) or MODEL_DATA.get(
            model, config.get("agent.dataset")
        )
        mk, dk = size_kwargs(model)
        mk.update(overrides.pop("model_kwargs", {}) or {})
        dk.update(overrides.pop("data_kwargs", {}) or {})
        kw = config.from_config(cls, overrides, what="agent field")
        kw.update(model=model, dataset=dataset, model_kwargs=mk, data_kwargs=dk)
        return cls(**kw)

    def key(self) -> tuple:
        """A hashable identity including the size dicts."""
        d = asdict(self)
        return tuple(
            (k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
            for k, v in sorted(d.items())
        )

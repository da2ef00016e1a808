"""The evaluation spec realised: held-out metrics of a set of parameters (``versions/gate.py``).

- ``heldout_loss``: mean cross-entropy over the spec's held-out batches (both models);
- ``accuracy`` (digits): top-1 on the held-out split;
- ``char_accuracy`` (code): greedy next-character accuracy on held-out code;
- ``exact_match`` (code): the share of held-out windows whose last ``completion_chars``
  characters are reproduced exactly by a greedy completion of the code before them. With
  greedy decoding a completion matches iff every one of its characters is the argmax given the
  true prefix, so one causal forward pass per window decides it, exactly.

The batches are the same for every version (the dataset's fixed held-out draw), so comparisons
between versions are paired. :class:`LocalEvaluator` evaluates registry commits in this process;
``worker.agent_evaluate`` runs the same on a worker of the fleet.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cluster_app.agent.data import CodeCorpus, load_dataset
from cluster_app.agent.models import make_model
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import SpecError
from cluster_app.sync.tree import unflatten
from cluster_app.versions.gate import EvalSpec
from cluster_app.versions.registry import Registry

__all__ = ["LocalEvaluator", "agent_spec_of", "evaluate_params"]


def agent_spec_of(config: dict[str, Any]) -> AgentSpec:
    """The agent spec recorded in a commit's training config (a run spec's ``agent``)."""
    agent = config.get("agent")
    if not isinstance(agent, dict):
        raise SpecError("the commit's config records no agent spec: it cannot be evaluated")
    return AgentSpec(**agent)


@functools.lru_cache(maxsize=8)
def _compiled(spec: AgentSpec):
    data = load_dataset(spec.dataset, **spec.data_kwargs)
    model = make_model(spec.model, **{**data.model_kwargs(), **spec.model_kwargs})

    @functools.partial(jax.jit, static_argnums=3)
    def step(params, x, y, m):
        loss, _ = model.loss(params, (x, y))
        hit = jnp.argmax(model.apply(params, x), axis=-1) == y
        if hit.ndim == 1:  # a classifier: one label per example
            return loss, hit.mean(), hit.mean()
        return loss, hit.mean(), jnp.all(hit[:, -m:], axis=-1).mean()

    return data, step


def evaluate_params(agent: AgentSpec, params: dict[str, np.ndarray], spec: EvalSpec) -> dict:
    """The held-out metrics of ``params`` (flat, as stored) for ``agent``'s model."""
    data, step = _compiled(agent)
    m = spec.completion_chars
    if isinstance(data, CodeCorpus) and m > data.context:
        raise SpecError(f"completion_chars={m} exceeds the model's context {data.context}")
    tree = jax.tree.map(jnp.asarray, unflatten(params))
    batches = data.eval_batches(spec.batches, spec.batch_size)
    rows = [jax.device_get(step(tree, x, y, m)) for x, y in batches]
    loss, acc, exact = (float(np.mean([r[i] for r in rows])) for i in range(3))
    if isinstance(data, CodeCorpus):
        return {"heldout_loss": loss, "char_accuracy": acc, "exact_match": exact}
    return {"heldout_loss": loss, "accuracy": acc}


class LocalEvaluator:
    """Evaluates registry commits in this process (the registry's ``evaluator``)."""

    def __init__(self, store_url: str, storage_options: dict | None = None) -> None:
        self.registry = Registry(store_url, storage_options)

    def __call__(self, config: dict, params_digest: str, spec: EvalSpec) -> dict:
        params = self.registry.objects.get(params_digest)
        return evaluate_params(agent_spec_of(config), params, spec)

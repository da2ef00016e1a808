"""The worker side of serving: the served versions kept in memory, batches completed, logged
prompts scored.

A worker keeps the :class:`~cluster_app.agent.generate.Generator` of each version it served
recently (an LRU of ``cluster-app.serving.versions-per-worker``), so a batch for a served
version costs its generation only; a version seen for the first time is read from the registry
(checked against its digest) and compiled once. Nothing here touches the worker's training
agent or its run state.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np

from cluster_app import config
from cluster_app.agent.data import encode, load_dataset
from cluster_app.agent.evaluate import agent_spec_of
from cluster_app.agent.generate import Generator
from cluster_app.agent.models import make_model
from cluster_app.sync.tree import unflatten
from cluster_app.versions.registry import Registry

__all__ = ["score_texts", "serve_batch", "server_for", "warm"]

_lock = threading.Lock()
_servers: OrderedDict[str, tuple[Generator, object]] = OrderedDict()


def server_for(store_url: str, cfg: dict, params_digest: str) -> tuple[Generator, object]:
    """``(generator, model)`` of the registry parameters ``params_digest``, cached."""
    with _lock:
        if params_digest in _servers:
            _servers.move_to_end(params_digest)
            return _servers[params_digest]
    spec = agent_spec_of(cfg)
    data = load_dataset(spec.dataset, **spec.data_kwargs)
    model = make_model(spec.model, **{**data.model_kwargs(), **spec.model_kwargs})
    flat = Registry(store_url).objects.get(params_digest)
    params = jax.tree.map(jnp.asarray, unflatten(flat))
    entry = (Generator(params, model.config), model)
    with _lock:
        _servers[params_digest] = entry
        while len(_servers) > config.get("serving.versions-per-worker"):
            _servers.popitem(last=False)
    return entry


def serve_batch(
    store_url: str,
    cfg: dict,
    params_digest: str,
    prompts: list[str],
    max_new: int,
    temperatures: list[float],
    seed: int,
) -> list[str]:
    generator, _ = server_for(store_url, cfg, params_digest)
    return generator.complete(prompts, max_new, temperatures, seed)


def warm(store_url: str, cfg: dict, params_digest: str, max_new: int, size: int) -> float:
    """Load a version and compile one of its batch programs; returns the seconds it took."""
    t0 = time.perf_counter()
    generator, _ = server_for(store_url, cfg, params_digest)
    generator.warm(max_new, size)
    return time.perf_counter() - t0


def score_texts(store_url: str, cfg: dict, params_digest: str, texts: list[str]) -> float:
    """Mean next-character cross-entropy of ``texts`` under the version: the eval spec's
    ``heldout_loss``, on logged prompts instead of the held-out corpus (the live canary's
    quality metric)."""
    generator, model = server_for(store_url, cfg, params_digest)
    ctx = generator.context
    windows = [encode(t)[-(ctx + 1) :] for t in texts if len(t) >= 2]
    if not windows:
        return float("nan")
    width = max(len(w) for w in windows) - 1
    x = np.zeros((len(windows), width), np.int32)
    y = np.zeros((len(windows), width), np.int32)
    mask = np.zeros((len(windows), width), np.float32)
    for i, w in enumerate(windows):
        x[i, : len(w) - 1], y[i, : len(w) - 1], mask[i, : len(w) - 1] = w[:-1], w[1:], 1.0
    logits = model.apply(generator.params, jnp.asarray(x))  # type: ignore[attr-defined]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(y)[..., None], axis=-1)[..., 0]
    return float((nll * mask).sum() / mask.sum())

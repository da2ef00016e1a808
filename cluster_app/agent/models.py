"""Pure JAX models: parameters are nested dicts of arrays, functions are pure.

A :class:`Model` is a small interface (``init``, ``apply``, ``loss``) built by a factory from
plain config values; nothing here knows about Dask, zarr or Orbax. Parameters are nested
``dict[str, ...]`` with string keys only (blocks are ``"0"``, ``"1"``, ...), so a flat
``"a/b/c"`` path names every leaf for storage without JAX-specific key types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cluster_app.errors import SpecError

__all__ = ["MODELS", "Model", "make_codelm", "make_mlp", "make_model"]

Params = dict[str, Any]


class Model(NamedTuple):
    """A pure model: ``init(key) -> params``, ``apply(params, x) -> logits``,
    ``loss(params, batch) -> (loss, metrics)`` with ``batch = (x, y)``."""

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    loss: Callable[[Params, tuple[jax.Array, jax.Array]], tuple[jax.Array, dict]]
    config: dict


def _dense(key: jax.Array, n_in: int, n_out: int) -> Params:
    w = jax.random.normal(key, (n_in, n_out), jnp.float32) * (1.0 / jnp.sqrt(n_in))
    return {"w": w, "b": jnp.zeros((n_out,), jnp.float32)}


def _layer_norm(p: Params, x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _ln_init(d: int) -> Params:
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()


def make_mlp(n_in: int, n_classes: int, hidden: int = 128, n_layers: int = 2) -> Model:
    """A ReLU multi-layer perceptron classifier."""
    sizes = [n_in] + [hidden] * n_layers + [n_classes]

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, len(sizes) - 1)
        return {str(i): _dense(k, a, b) for i, (k, a, b) in enumerate(zip(keys, sizes, sizes[1:]))}

    def apply(params: Params, x: jax.Array) -> jax.Array:
        n = len(params)
        for i in range(n):
            x = x @ params[str(i)]["w"] + params[str(i)]["b"]
            if i < n - 1:
                x = jax.nn.relu(x)
        return x

    def loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict]:
        x, y = batch
        logits = apply(params, x)
        acc = (logits.argmax(-1) == y).mean()
        return _cross_entropy(logits, y), {"accuracy": acc}

    cfg = {"n_in": n_in, "n_classes": n_classes, "hidden": hidden, "n_layers": n_layers}
    return Model("mlp", init, apply, loss, cfg)


def make_codelm(
    vocab: int, context: int = 64, d_model: int = 96, n_layers: int = 2, n_heads: int = 4
) -> Model:
    """A small pre-norm, causal, character-level transformer language model."""
    if d_model % n_heads:
        raise SpecError(f"codelm d-model={d_model} must be divisible by n-heads={n_heads}")
    d_head = d_model // n_heads

    def init(key: jax.Array) -> Params:
        k_emb, k_pos, k_head, *k_blocks = jax.random.split(key, 3 + n_layers)
        blocks = {}
        for i, kb in enumerate(k_blocks):
            k1, k2, k3, k4 = jax.random.split(kb, 4)
            blocks[str(i)] = {
                "ln1": _ln_init(d_model),
                "qkv": _dense(k1, d_model, 3 * d_model),
                "proj": _dense(k2, d_model, d_model),
                "ln2": _ln_init(d_model),
                "up": _dense(k3, d_model, 4 * d_model),
                "down": _dense(k4, 4 * d_model, d_model),
            }
        return {
            "embed": jax.random.normal(k_emb, (vocab, d_model), jnp.float32) * 0.02,
            "pos": jax.random.normal(k_pos, (context, d_model), jnp.float32) * 0.02,
            "blocks": blocks,
            "ln_f": _ln_init(d_model),
            "head": _dense(k_head, d_model, vocab),
        }

    def attention(p: Params, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        qkv = x @ p["qkv"]["w"] + p["qkv"]["b"]
        q, k, v = jnp.split(qkv.reshape(b, t, 3 * n_heads, d_head), 3, axis=2)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d_head).astype(x.dtype)
        mask = jnp.tril(jnp.ones((t, t), bool))
        att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d_model)
        return out @ p["proj"]["w"] + p["proj"]["b"]

    def apply(params: Params, x: jax.Array) -> jax.Array:
        t = x.shape[-1]
        h = params["embed"][x] + params["pos"][:t]
        for i in range(n_layers):
            p = params["blocks"][str(i)]
            h = h + attention(p, _layer_norm(p["ln1"], h))
            u = jax.nn.gelu(_layer_norm(p["ln2"], h) @ p["up"]["w"] + p["up"]["b"])
            h = h + u @ p["down"]["w"] + p["down"]["b"]
        h = _layer_norm(params["ln_f"], h)
        return h @ params["head"]["w"] + params["head"]["b"]

    def loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict]:
        x, y = batch
        return _cross_entropy(apply(params, x), y), {}

    cfg = {
        "vocab": vocab,
        "context": context,
        "d_model": d_model,
        "n_layers": n_layers,
        "n_heads": n_heads,
    }
    return Model("codelm", init, apply, loss, cfg)


MODELS: dict[str, Callable[..., Model]] = {"codelm": make_codelm, "mlp": make_mlp}


def make_model(name: str, **kwargs: Any) -> Model:
    """Build a model by name (a key of :data:`MODELS`) from keyword sizes."""
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)

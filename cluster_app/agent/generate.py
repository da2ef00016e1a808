"""Batched completion for the code model: one prefill, then a KV-cached decode inside one
jitted ``lax.fori_loop``.

Prompts sit at positions ``0..len-1`` of the model's context (right-padded, as the model was
trained: windows start at position 0), so row ``b``'s ``t``-th new character is at position
``len_b + t``. The prefill computes every layer's keys and values of the prompts in one causal
forward pass (padding comes after a row's text, so causal attention never sees it); each decode
step embeds one character per row, writes its key and value into the cache at the row's
position, attends to positions ``<= len_b + t`` and samples the next character (greedy at
temperature 0). A prompt and its completion share the context: ``len + max_new <= context``,
longer prompts keep their last ``context - max_new`` characters.

Shapes are static per (batch bucket, prompt width, ``max_new``); :class:`Generator` pads the
batch to one of :data:`BATCH_BUCKETS` so a server compiles a handful of programs, not one per
request, and :meth:`Generator.warm` compiles them before traffic arrives.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cluster_app.agent.data import VOCAB, decode, encode
from cluster_app.agent.models import _layer_norm
from cluster_app.agent.spec import BATCH_BUCKETS
from cluster_app.errors import SpecError

__all__ = ["Generator"]


@functools.lru_cache(maxsize=16)
def _decoder(ctx: int, d: int, n_layers: int, n_heads: int):
    """The jitted generate function of one architecture, shared by every version of it (the
    parameters are an argument: a new version of a served model compiles nothing)."""
    dh = d // n_heads
    scale = 1.0 / np.sqrt(dh)

    def mlp(p, x):
        u = jax.nn.gelu(_layer_norm(p["ln2"], x) @ p["up"]["w"] + p["up"]["b"])
        return u @ p["down"]["w"] + p["down"]["b"]

    def heads(p, x):  # [..., d] -> q, k, v of [..., H, dh]
        qkv = x @ p["qkv"]["w"] + p["qkv"]["b"]
        return jnp.split(qkv.reshape(*x.shape[:-1], 3 * n_heads, dh), 3, axis=-2)

    def sample(logits, temperature, key):
        logits = logits.at[:, 0].set(-jnp.inf)  # never the unknown character
        hot = logits / jnp.maximum(temperature, 1e-6)[:, None]
        drawn = jax.random.categorical(key, hot, axis=-1)
        return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)

    @functools.partial(jax.jit, static_argnames=("n_new",))
    def generate(params, prompt, lengths, temperature, key, n_new: int):
        b, width = prompt.shape
        rows = jnp.arange(b)
        h = params["embed"][prompt] + params["pos"][:width]
        causal = jnp.tril(jnp.ones((width, width), bool))
        caches = []
        for i in range(n_layers):
            p = params["blocks"][str(i)]
            q, k, v = heads(p, _layer_norm(p["ln1"], h))
            att = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
            att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, width, d)
            h = h + out @ p["proj"]["w"] + p["proj"]["b"]
            h = h + mlp(p, h)
            pad = ((0, 0), (0, ctx - width), (0, 0), (0, 0))
            caches.append((jnp.pad(k, pad), jnp.pad(v, pad)))
        last = _layer_norm(params["ln_f"], h[rows, lengths - 1])
        key, sub = jax.random.split(key)
        tok = sample(last @ params["head"]["w"] + params["head"]["b"], temperature, sub)

        def step(t, carry):
            caches, tok, out, key = carry
            out = out.at[:, t].set(tok)
            pos = lengths + t  # [b]: where this character sits
            x = params["embed"][tok] + params["pos"][pos]
            visible = jnp.arange(ctx)[None, :] <= pos[:, None]  # [b, ctx]
            new = []
            for i in range(n_layers):
                p = params["blocks"][str(i)]
                q, k, v = heads(p, _layer_norm(p["ln1"], x))  # [b, H, dh]
                kc, vc = caches[i]
                kc, vc = kc.at[rows, pos].set(k), vc.at[rows, pos].set(v)
                att = jnp.einsum("bhd,bkhd->bhk", q, kc) * scale
                att = jax.nn.softmax(jnp.where(visible[:, None, :], att, -1e9), axis=-1)
                o = jnp.einsum("bhk,bkhd->bhd", att, vc).reshape(b, d)
                x = x + o @ p["proj"]["w"] + p["proj"]["b"]
                x = x + mlp(p, x)
                new.append((kc, vc))
            logits = _layer_norm(params["ln_f"], x) @ params["head"]["w"] + params["head"]["b"]
            key, sub = jax.random.split(key)
            return new, sample(logits, temperature, sub), out, key

        out = jnp.zeros((b, n_new), jnp.int32)
        return jax.lax.fori_loop(0, n_new, step, (caches, tok, out, key))[2]

    return generate


class Generator:
    """Completes batches of prompts with one set of code-model parameters (kept on device)."""

    def __init__(self, params: Any, cfg: dict[str, Any]) -> None:
        if "context" not in cfg or "n_heads" not in cfg:
            raise SpecError("completion needs the code model ('codelm')")
        self.params, self.cfg, self.context = params, cfg, int(cfg["context"])
        self._generate = _decoder(
            int(cfg["context"]), int(cfg["d_model"]), int(cfg["n_layers"]), int(cfg["n_heads"])
        )

    def complete(
        self,
        prompts: list[str],
        max_new: int,
        temperature: list[float] | float = 0.0,
        seed: int = 0,
    ) -> list[str]:
        """One completion of ``max_new`` characters per prompt."""
        if not 1 <= max_new < self.context:
            raise SpecError(f"max_new={max_new} must be in [1, {self.context - 1}]")
        width = self.context - max_new
        ids = [encode(p)[-width:] if p else encode("\n") for p in prompts]
        n = len(ids)
        bucket = next(b for b in (*BATCH_BUCKETS, n) if b >= n)  # a few shapes, not one per n
        prompt = np.zeros((bucket, width), np.int32)
        lengths = np.ones(bucket, np.int32)
        for i, row in enumerate(ids):
            prompt[i, : len(row)] = row
            lengths[i] = len(row)
        temps = np.zeros(bucket, np.float32)
        temps[:n] = temperature
        out = self._generate(
            self.params, prompt, lengths, temps, jax.random.PRNGKey(seed), n_new=max_new
        )
        return [decode(r) for r in np.asarray(out)[:n]]

    def warm(self, max_new: int, size: int) -> None:
        """Compile the program for ``max_new`` characters at batch bucket ``size``."""
        self.complete(["\n"] * size, max_new)

    @property
    def vocab(self) -> int:
        return len(VOCAB)

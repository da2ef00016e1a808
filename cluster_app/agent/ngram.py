"""A character n-gram baseline for code completion, built from the same training text.

For each order ``1..n`` the most frequent next character of every context seen in training is
kept (vectorised: contexts packed into integers, counted with ``np.unique``); prediction backs
off from the longest context seen to shorter ones. Its ``exact_match`` is measured exactly as
the eval spec measures the model's (``agent/evaluate.py``): the last ``completion_chars``
characters of each held-out window, greedily, given the true code before them.
"""

from __future__ import annotations

import numpy as np

from cluster_app.agent.data import VOCAB, CodeCorpus

__all__ = ["NgramModel"]


def _contexts(tokens: np.ndarray, order: int, base: int) -> np.ndarray:
    """The packed ``order``-character context before each position ``order..len-1``."""
    out = np.zeros(len(tokens) - order, np.int64)
    for j in range(order):
        out = out * base + tokens[j : len(tokens) - order + j]
    return out


class NgramModel:
    """Greedy next-character prediction by the longest context seen in training."""

    def __init__(self, tokens: np.ndarray, order: int = 6) -> None:
        self.order, self.base = order, len(VOCAB)
        tokens = tokens.astype(np.int64)
        self.tables: list[tuple[np.ndarray, np.ndarray]] = []
        for n in range(1, order + 1):
            ctx = _contexts(tokens, n, self.base)
            pairs, counts = np.unique(ctx * self.base + tokens[n:], return_counts=True)
            keys, nxt = pairs // self.base, pairs % self.base
            # per context, the next character with the highest count (ties: the lowest id)
            by = np.lexsort((-counts, keys))
            keys, nxt = keys[by], nxt[by]
            first = np.r_[True, keys[1:] != keys[:-1]]
            self.tables.append((keys[first], nxt[first]))
        counts = np.bincount(tokens, minlength=self.base)
        counts[0] = 0
        self.unigram = int(counts.argmax())

    def predict(self, history: np.ndarray) -> np.ndarray:
        """The next character after each row of ``history`` ([rows, >= order])."""
        out = np.full(len(history), self.unigram, np.int64)
        done = np.zeros(len(history), bool)
        for n in range(self.order, 0, -1):
            keys, nxt = self.tables[n - 1]
            ctx = np.zeros(len(history), np.int64)
            for j in range(n):
                ctx = ctx * self.base + history[:, history.shape[1] - n + j]
            i = np.clip(np.searchsorted(keys, ctx), 0, len(keys) - 1)
            hit = (keys[i] == ctx) & ~done
            out[hit], done = nxt[i][hit], done | hit
        return out

    def exact_match(self, data: CodeCorpus, batches: int, batch_size: int, m: int) -> float:
        """Share of held-out windows whose last ``m`` characters it predicts exactly."""
        hits = []
        for x, y in data.eval_batches(batches, batch_size):
            ok = np.ones(len(x), bool)
            for t in range(x.shape[1] - m, x.shape[1]):
                ok &= self.predict(x[:, : t + 1]) == y[:, t]
            hits.append(ok)
        return float(np.concatenate(hits).mean())

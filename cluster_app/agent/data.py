"""Real data that ships with Python: the standard library's source code and sklearn's digits.

Both datasets expose the same small interface:

- ``batches(round, shard, num_shards, steps, batch_size, seed)`` yields ``steps`` numpy batches
  ``(x, y)`` drawn only from shard ``shard`` of ``num_shards`` of the training split, from a
  random generator seeded by ``(seed, round, shard, num_shards)``: re-running a round gives the
  very same batches, on any worker.
- ``eval_batches(n, batch_size)``: a fixed list of held-out batches.
- ``baseline_loss()``: the held-out cross-entropy of a trivial model (unigram characters for
  code, the class prior for digits), the bar a trained model must clear.
- ``model_kwargs()``: the sizes a matching model needs (vocabulary, inputs, classes).

No JAX here: batches are numpy, so data code runs anywhere.
"""

from __future__ import annotations

import functools
import os
import sysconfig
import zlib
from collections.abc import Iterator

import numpy as np

from cluster_app.errors import SpecError

__all__ = [
    "VOCAB",
    "CodeCorpus",
    "Digits",
    "Mixture",
    "decode",
    "encode",
    "load_dataset",
    "stdlib_modules",
    "task_dataset",
]

# index 0 is "unknown"; then tab, newline and printable ASCII
VOCAB = "\x00\t\n" + "".join(chr(c) for c in range(32, 127))
_TABLE = np.zeros(256, np.uint8)
for _i, _ch in enumerate(VOCAB[1:], start=1):
    _TABLE[ord(_ch)] = _i


def encode(text: str) -> np.ndarray:
    """Characters -> token ids (uint8); anything outside tab/newline/printable ASCII -> 0."""
    return _TABLE[np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8)]


def decode(ids: np.ndarray) -> str:
    """Token ids -> text; the unknown token renders as U+FFFD."""
    return "".join("\ufffd" if i == 0 else VOCAB[i] for i in np.asarray(ids).tolist())


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def _check_shard(shard: int, num_shards: int, steps: int, batch_size: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise SpecError(f"shard={shard} must be in [0, num_shards={num_shards})")
    if steps < 1:
        raise SpecError(f"steps={steps} must be a positive integer")
    if batch_size < 1:
        raise SpecError(f"batch_size={batch_size} must be a positive integer")


def stdlib_modules(root: str | None = None) -> list[str]:
    """Relative paths of the standard library's ``.py`` files, sorted (site-packages excluded)."""
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        out += [
            os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.endswith(".py")
        ]
    return sorted(out)


class CodeCorpus:
    """Character-level code corpus from the Python standard library's own sources.

    Modules are split by name: a module is held out when ``crc32(path) % holdout_every == 0``,
    a split that is the same on every machine and Python process. Training and held-out text
    are each the concatenation of their modules in a fixed shuffled order, cut at the limits.
    """

    name = "code"
    examples = None  # windows, not examples: a replay stream is a sample of them

    def __init__(
        self,
        context: int = 64,
        max_train_chars: int = 3_000_000,
        max_eval_chars: int = 200_000,
        holdout_every: int = 10,
        root: str | None = None,
    ) -> None:
        self.context = context
        self.root = root or sysconfig.get_paths()["stdlib"]
        modules = stdlib_modules(self.root)
        if not modules:
            raise SpecError(f"no .py files found under {self.root!r}")
        order = _rng(0).permutation(len(modules))
        modules = [modules[i] for i in order]
        self.eval_modules = [m for m in modules if zlib.crc32(m.encode()) % holdout_every == 0]
        self.train_modules = [m for m in modules if zlib.crc32(m.encode()) % holdout_every != 0]
        self.train = self._read(self.train_modules, max_train_chars)
        self.eval = self._read(self.eval_modules, max_eval_chars)

    def _read(self, modules: list[str], limit: int) -> np.ndarray:
        parts, total = [], 0
        for m in modules:
            with open(os.path.join(self.root, m), encoding="utf-8", errors="replace") as f:
                ids = encode(f.read())
            parts.append(ids[: limit - total])
            total += len(parts[-1])
            if total >= limit:
                break
        return np.concatenate(parts)

    def model_kwargs(self) -> dict:
        return {"vocab": len(VOCAB), "context": self.context}

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = starts[:, None] + np.arange(self.context + 1)
        w = tokens[idx].astype(np.int32)
        return w[:, :-1], w[:, 1:]

    def batches(
        self, round: int, shard: int, num_shards: int, steps: int, batch_size: int, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_shard(shard, num_shards, steps, batch_size)
        n = len(self.train)
        lo, hi = n * shard // num_shards, n * (shard + 1) // num_shards
        if hi - lo <= self.context + 1:
            raise SpecError(
                f"shard {shard}/{num_shards} has too little text for context "
                f"{self.context}; lower num_shards or raise data.code.max-train-chars"
            )
        rng = _rng(seed, round, shard, num_shards)
        for _ in range(steps):
            starts = rng.integers(lo, hi - self.context - 1, size=batch_size)
            yield self._windows(self.train, starts)

    def eval_batches(self, n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = _rng(1)
        starts = rng.integers(0, len(self.eval) - self.context - 1, size=(n, batch_size))
        return [self._windows(self.eval, s) for s in starts]

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training windows from generator ``seed`` (a replay stream, a Fisher sample)."""
        starts = _rng(seed, 2).integers(0, len(self.train) - self.context - 1, size=n)
        return self._windows(self.train, starts)

    def baseline_loss(self) -> float:
        """Held-out cross-entropy (nats/char) of a unigram character model fit on training text."""
        counts = np.bincount(self.train, minlength=len(VOCAB)).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        return float(-logp[self.eval].mean())


class Digits:
    """scikit-learn's bundled 8x8 digits; a fixed 80/20 train/test split."""

    name = "digits"

    def __init__(
        self, classes: tuple[int, ...] | None = None, permute_seed: int | None = None
    ) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        if permute_seed is not None:  # Permuted-Digits: one fixed shuffle of the 64 pixels
            x = x[:, _rng(permute_seed, 3).permutation(x.shape[1])]
        y = y.astype(np.int32)
        if classes is not None:
            keep = np.isin(y, classes)
            x, y = x[keep], y[keep]
        perm = _rng(0).permutation(len(y))
        cut = int(0.8 * len(y))
        self.x_train, self.y_train = x[perm[:cut]], y[perm[:cut]]
        self.x_eval, self.y_eval = x[perm[cut:]], y[perm[cut:]]
        self.examples = len(self.y_train)

    def model_kwargs(self) -> dict:
        return {"n_in": self.x_train.shape[1], "n_classes": 10}

    def batches(
        self, round: int, shard: int, num_shards: int, steps: int, batch_size: int, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_shard(shard, num_shards, steps, batch_size)
        idx = np.array_split(np.arange(len(self.y_train)), num_shards)[shard]
        rng = _rng(seed, round, shard, num_shards)
        for _ in range(steps):
            pick = idx[rng.integers(0, len(idx), size=batch_size)]
            yield self.x_train[pick], self.y_train[pick]

    def eval_batches(self, n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        # the whole test split once, in batch_size pieces (n is an upper bound)
        k = max(1, min(n, -(-len(self.y_eval) // batch_size)))
        return list(zip(np.array_split(self.x_eval, k), np.array_split(self.y_eval, k)))

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training examples from generator ``seed``, each at most once while they last
        (a pass over the split in a seeded order: a replay stream, a Fisher sample)."""
        order = _rng(seed, 2).permutation(len(self.y_train))
        idx = np.resize(order, n) if n > len(order) else order[:n]
        return self.x_train[idx], self.y_train[idx]

    def baseline_loss(self) -> float:
        """Held-out cross-entropy of predicting the training class frequencies."""
        counts = np.bincount(self.y_train, minlength=10).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        return float(-logp[self.y_eval].mean())


class Mixture:
    """Several variants of one dataset drawn evenly: joint training over tasks."""

    def __init__(self, parts: list[CodeCorpus | Digits]) -> None:
        self.parts = parts
        self.name = parts[0].name

    def model_kwargs(self) -> dict:
        return self.parts[0].model_kwargs()

    def _split(self, n: int) -> list[int]:
        k = len(self.parts)
        return [n // k + (i < n % k) for i in range(k)]

    def batches(
        self, round: int, shard: int, num_shards: int, steps: int, batch_size: int, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # part i draws from its own generator (seed + i): no two parts share their batches
        its = [
            p.batches(round, shard, num_shards, steps, b, seed + i)
            for i, (p, b) in enumerate(zip(self.parts, self._split(batch_size)))
            if b
        ]
        for _ in range(steps):
            got = [next(it) for it in its]
            yield np.concatenate([x for x, _ in got]), np.concatenate([y for _, y in got])

    def eval_batches(self, n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [b for p in self.parts for b in p.eval_batches(n, batch_size)]

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        got = [p.sample(b, seed + i) for i, (p, b) in enumerate(zip(self.parts, self._split(n)))]
        return np.concatenate([x for x, _ in got]), np.concatenate([y for _, y in got])

    def baseline_loss(self) -> float:
        return float(np.mean([p.baseline_loss() for p in self.parts]))


def task_dataset(name: str, base: dict, parts: tuple[dict, ...]) -> CodeCorpus | Digits | Mixture:
    """The dataset of one continual task: each part's keywords over ``base`` (a Mixture if more
    than one part)."""
    built = [load_dataset(name, **{**base, **part}) for part in parts]
    return built[0] if len(built) == 1 else Mixture(built)


@functools.lru_cache(maxsize=16)
def load_dataset(name: str, **kwargs) -> CodeCorpus | Digits:
    """Build (and cache per process) a dataset by name: ``"code"`` or ``"digits"``."""
    factories: dict[str, type[CodeCorpus] | type[Digits]] = {"code": CodeCorpus, "digits": Digits}
    if name in factories:
        try:
            return factories[name](**kwargs)
        except TypeError as e:
            raise SpecError(f"dataset {name!r} does not take {sorted(kwargs)}: {e}") from None
    raise SpecError(f"unknown dataset {name!r}; choose one of code, digits")

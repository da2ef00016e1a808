from __future__ import annotations

import numpy as np
import pytest

from cluster_app.agent.data import VOCAB, CodeCorpus, Digits, decode, encode, load_dataset
from cluster_app.errors import SpecError


@pytest.fixture(scope="module")
def corpus():
    return CodeCorpus(context=32, max_train_chars=200_000, max_eval_chars=20_000)


def test_encode_decode_round_trip():
    text = "def f(x):\n\treturn x + 1  # ok"
    assert decode(encode(text)) == text
    assert encode("é")[0] == 0  # outside the vocabulary -> unknown
    assert len(VOCAB) == 98


def test_holdout_modules_are_disjoint_and_fixed(corpus):
    assert corpus.eval_modules and corpus.train_modules
    assert not set(corpus.eval_modules) & set(corpus.train_modules)
    again = CodeCorpus(context=32, max_train_chars=200_000, max_eval_chars=20_000)
    assert again.eval_modules == corpus.eval_modules
    np.testing.assert_array_equal(again.train, corpus.train)


def test_batches_reproducible_by_round_and_shard(corpus):
    a = list(corpus.batches(3, 1, 4, steps=5, batch_size=8))
    b = list(corpus.batches(3, 1, 4, steps=5, batch_size=8))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_round = next(corpus.batches(4, 1, 4, steps=1, batch_size=8))[0]
    other_shard = next(corpus.batches(3, 2, 4, steps=1, batch_size=8))[0]
    assert not np.array_equal(a[0][0], other_round)
    assert not np.array_equal(a[0][0], other_shard)


def test_targets_are_inputs_shifted(corpus):
    x, y = next(corpus.batches(0, 0, 1, steps=1, batch_size=4))
    assert x.shape == y.shape == (4, 32)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_unigram_baseline_is_sane(corpus):
    # a uniform guess over 98 symbols costs log(98) = 4.58 nats; code is far more predictable
    assert 2.5 < corpus.baseline_loss() < np.log(len(VOCAB))


def test_digit_shards_partition_training_set():
    d = Digits()
    seen = [set() for _ in range(3)]
    for s in range(3):
        for x, _ in d.batches(0, s, 3, steps=50, batch_size=32):
            seen[s] |= {row.tobytes() for row in x}
    assert not seen[0] & seen[1] and not seen[1] & seen[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard": 4, "num_shards": 4}, "shard=4 must be in"),
        ({"steps": 0}, "steps=0 must be a positive integer"),
        ({"batch_size": -1}, "batch_size=-1"),
    ],
)
def test_bad_batch_arguments(kwargs, message):
    args = {"round": 0, "shard": 0, "num_shards": 2, "steps": 1, "batch_size": 4, **kwargs}
    with pytest.raises(SpecError, match=message):
        next(Digits().batches(**args))


def test_unknown_dataset():
    with pytest.raises(SpecError, match="unknown dataset 'imagenet'; choose one of code, digits"):
        load_dataset("imagenet")

"""The serving core without a cluster: splits, batching, the canary's judgement, request
validation."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from scipy import stats

from cluster_app.errors import SpecError
from cluster_app.serving.batcher import Batcher, Overloaded
from cluster_app.serving.canary import judge
from cluster_app.serving.gateway import BadRequest, _parse, _response
from cluster_app.serving.metrics import ArmStats
from cluster_app.serving.router import Arm, Split, choose
from cluster_app.serving.spec import ServeSpec

SPEC = ServeSpec.from_config()


def split(weights=(0.9, 0.1), shadow=None) -> Split:
    arms = tuple(Arm(ref=f"arm{i}", commit=f"c{i}", weight=w) for i, w in enumerate(weights))
    return Split(arms=arms, shadow=shadow)


# ---------------------------------------------------------------- router
def test_weights_are_honoured_within_statistical_bounds():
    s = split((0.7, 0.2, 0.1))
    counts = {"arm0": 0, "arm1": 0, "arm2": 0}
    for i in range(6000):
        counts[choose(s, f"user-{i}").ref] += 1
    chi2 = stats.chisquare(list(counts.values()), [4200, 1200, 600])
    assert chi2.pvalue > 1e-3, counts


def test_users_are_sticky_and_a_new_split_reshuffles():
    s = split((0.5, 0.5))
    users = [f"u{i}" for i in range(400)]
    first = [choose(s, u).ref for u in users]
    assert first == [choose(s, u).ref for u in users]  # sticky
    other = split((0.5, 0.5))  # a second canary: another id
    moved = sum(a != choose(other, u).ref for a, u in zip(first, users))
    assert 120 < moved < 280  # about half move: independent assignment
    anonymous = {choose(s, None, random.Random(i)).ref for i in range(50)}
    assert anonymous == {"arm0", "arm1"}


def test_rollback_puts_everything_on_the_baseline_and_round_trips():
    s = split((0.8, 0.2), shadow=Arm("sh", "c9", 0.0)).rolled_back("p99 too high")
    assert s.state == "rolled_back" and s.shadow is None and s.reason == "p99 too high"
    assert {choose(s, f"u{i}").ref for i in range(200)} == {"arm0"}
    assert Split.from_dict(s.to_dict()) == s


def test_bad_splits_are_refused():
    with pytest.raises(SpecError, match="at least one arm"):
        Split(arms=())
    with pytest.raises(SpecError, match="not all zero"):
        split((0.0, 0.0))
    with pytest.raises(SpecError, match="appears twice"):
        Split(arms=(Arm("a", "c", 1.0), Arm("a", "c", 1.0)))


# ---------------------------------------------------------------- batcher
def test_requests_batch_up_to_the_window_and_the_queue_is_bounded():
    calls = []

    async def dispatch(key, payloads):
        calls.append((key, len(payloads)))
        await asyncio.sleep(0.05)
        return [p * 2 for p in payloads]

    async def main():
        b = Batcher(dispatch, window=0.02, max_batch=8, max_queue=20, max_in_flight=2)
        t0 = time.perf_counter()
        got = await asyncio.gather(*(b.submit("k", i) for i in range(5)))
        one_batch = time.perf_counter() - t0
        assert got == [0, 2, 4, 6, 8] and calls == [("k", 5)]
        assert one_batch < 0.5  # the window (20 ms) plus the batch (50 ms), not per request
        calls.clear()
        # more than a batch: full batches go at once, per key
        got = await asyncio.gather(*(b.submit(i % 2, i) for i in range(18)))
        assert got == [2 * i for i in range(18)]
        assert sorted(n for _, n in calls) == [1, 1, 8, 8]
        # beyond the queue: refused at once, with a Retry-After
        jobs = [asyncio.ensure_future(b.submit("k", i)) for i in range(20)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        with pytest.raises(Overloaded) as e:
            await b.submit("k", 99)
        assert time.perf_counter() - t0 < 0.04 and e.value.retry_after >= 1  # not after a batch
        await asyncio.gather(*jobs)

    asyncio.run(main())


def test_a_failed_batch_fails_each_of_its_requests():
    async def dispatch(key, payloads):
        raise RuntimeError("worker died")

    async def main():
        b = Batcher(dispatch, window=0.001, max_batch=4, max_queue=10, max_in_flight=1)
        results = await asyncio.gather(
            *(b.submit("k", i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results) and b.queued == 0

    asyncio.run(main())


def test_the_window_is_a_share_of_the_latency_budget():
    spec = ServeSpec.from_config(latency_budget_ms=200.0, window_fraction=0.05)
    assert spec.window == pytest.approx(0.01)


# ---------------------------------------------------------------- canary
def _stats(latencies, errors=0) -> ArmStats:
    s = ArmStats()
    for i, x in enumerate(latencies):
        s.record(x, ok=i >= errors)
    return s


def test_the_canary_judges_errors_latency_and_quality():
    base = _stats([0.02] * 150)
    assert judge(SPEC, base, _stats([0.021] * 150), (1.50, 1.52)) == []
    assert "error rate" in judge(SPEC, base, _stats([0.02] * 150, errors=30))[0]
    assert "p99" in judge(SPEC, base, _stats([0.02] * 135 + [0.5] * 15))[0]
    worse = judge(SPEC, base, _stats([0.02] * 150), (1.50, 2.10))  # 40% worse loss
    assert worse and worse[0].startswith("quality: heldout_loss")
    # too few requests: latency and errors are not judged yet, quality is
    assert judge(SPEC, _stats([0.02] * 5), _stats([0.9] * 5, errors=5)) == []
    # errors are judged from min-requests on, the p99 only from min-latency-requests on:
    # the p99 of 30 samples is their maximum, one slow request
    few = ServeSpec.from_config(min_requests=20, min_latency_requests=100)
    slow_once = _stats([0.02] * 29 + [2.0])
    assert judge(few, _stats([0.02] * 30), slow_once) == []
    assert "error rate" in judge(few, _stats([0.02] * 30), _stats([0.02] * 30, errors=10))[0]
    assert "p99" in judge(few, _stats([0.02] * 200), _stats([0.02] * 190 + [2.0] * 10))[0]


# ---------------------------------------------------------------- requests
@pytest.mark.parametrize(
    "raw, param",
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"prompt": 3}', "prompt"),
        (b'{"prompt": []}', "prompt"),
        (b'{"prompt": "x", "max_tokens": -1}', "max_tokens"),
        (b'{"prompt": "x", "max_tokens": "16"}', "max_tokens"),
        (b'{"prompt": "x", "max_tokens": 100000}', "max_tokens"),
        (b'{"prompt": "x", "temperature": "hot"}', "temperature"),
        (b'{"prompt": "x", "temperature": 5}', "temperature"),
        (b'{"prompt": "x", "stop": 7}', "stop"),
        (b'{"prompt": "x", "n": 3}', "n"),
        (b'{"prompt": "x", "user": 5}', "user"),
        (b'{"prompt": "x", "model": 5}', "model"),
    ],
)
def test_bad_requests_name_what_is_wrong(raw, param):
    with pytest.raises(BadRequest) as e:
        _parse(raw, SPEC)
    assert e.value.param == param and e.value.status == 400


def test_an_oversized_prompt_is_refused():
    with pytest.raises(BadRequest, match="limit is") as e:
        _parse(b'{"prompt": "' + b"x" * (SPEC.max_prompt_chars + 1) + b'"}', SPEC)
    assert e.value.code == "context_length_exceeded"


def test_responses_follow_the_openai_shape_and_honour_stop():
    body = _parse(b'{"prompt": "def f(", "max_tokens": 8, "stop": [")"]}', SPEC)
    out = _response(body, ["x, y): return"], Arm("prod", "c" * 64, 1.0), SPEC)
    choice = out["choices"][0]
    assert out["object"] == "text_completion" and out["model"].startswith("prod@")
    assert choice == {"text": "x, y", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert out["usage"]["completion_tokens"] == 4

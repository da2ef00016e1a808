"""The placement score (pure numpy): signals, normalisation, the two fixes, tie-breaks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_app.placement.dispatch import Dispatcher, ScorePolicy
from cluster_app.placement.fleet import Fleet
from cluster_app.placement.queue import QueuedTask
from cluster_app.placement.scoring import (
    Signals,
    Weights,
    best,
    latency,
    load,
    placement_key,
    score,
)

W = Weights()
REF = 0.1


def sig(n: int = 3, **over) -> Signals:
    base = {
        "cpu": np.zeros(n),
        "accel": np.zeros(n),
        "busy": np.zeros(n),
        "slots": np.ones(n),
        "slowness": np.ones(n),
        "rtt": np.zeros(n),
        "tiebreak": np.arange(n),
    }
    base.update(
        {k: np.asarray(v, dtype=float if k != "tiebreak" else int) for k, v in over.items()}
    )
    return Signals(**base)


def test_default_weights_are_the_documents():
    assert W == (0.6, 0.3, 0.1)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (Weights(load=-0.1), "load=-0.1"),
        (Weights(latency=float("nan")), "latency=nan"),
        (Weights(load=0, latency=0), "both 0"),
    ],
)
def test_bad_weights_are_named(weights, match):
    with pytest.raises(ValueError, match=match):
        weights.validated()


def test_latency_is_round_trip_over_reference_clipped():
    s = sig(4, rtt=[0.0, 0.05, 0.1, 0.4])
    np.testing.assert_allclose(latency(s, 0.1), [0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="latency_ref=0"):
        latency(s, 0)


def test_load_is_worst_utilisation_scaled_by_slowness_in_unit_interval():
    s = sig(5, cpu=[0.2, 0.9, 0, 0, 0], accel=[0, 0, 0.7, 0, 0], busy=[0, 0, 0, 1, 0])
    s = s._replace(slots=np.array([4, 4, 4, 4, 4.0]))
    u = np.array([0.25, 0.9, 0.7, 0.5, 0.25])  # max(cpu, accel, (busy + 1) / slots)
    np.testing.assert_allclose(load(s), u / (1 + u))
    # the document's reading: current utilisation, without the task being placed
    np.testing.assert_allclose(
        load(s, include_task=False), [0.2 / 1.2, 0.9 / 1.9, 0.7 / 1.7, 0.2, 0]
    )
    slow = s._replace(slowness=np.full(5, 3.0))
    np.testing.assert_allclose(load(slow), 3 * u / (1 + 3 * u))
    assert ((load(slow) >= 0) & (load(slow) < 1)).all()


def test_a_slower_machine_looks_more_loaded_at_the_same_utilisation():
    s = sig(2, slowness=[1.0, 3.0])
    assert load(s)[1] > load(s)[0]
    assert best(score(s, W, latency_ref=REF), s.tiebreak) == 0


@given(
    cpu=st.floats(0, 1),
    busy=st.integers(0, 7),
    slots=st.integers(1, 8),
    slowness=st.floats(0.05, 20),
    rtt=st.floats(0, 1),
    bump=st.floats(0.01, 1),
)
def test_score_is_bounded_and_monotone_in_every_signal(cpu, busy, slots, slowness, rtt, bump):
    s = sig(1, cpu=[cpu], busy=[busy], slots=[slots], slowness=[slowness], rtt=[rtt])
    v = score(s, W, latency_ref=REF)[0]
    assert 0 <= v <= W.load + W.latency
    worse = [
        s._replace(cpu=s.cpu + bump),
        s._replace(busy=s.busy + 1),
        s._replace(slowness=s.slowness + bump),
        s._replace(rtt=s.rtt + bump),
    ]
    for w in worse:
        assert score(w, W, latency_ref=REF)[0] <= v + 1e-12


def test_flaw_1_the_documents_priority_term_never_changes_the_winner():
    rng = np.random.default_rng(0)
    s = sig(6, cpu=rng.random(6), rtt=rng.random(6) / 10, slowness=1 + rng.random(6))
    base = score(s, W, latency_ref=REF)
    for priority in (-5, 0, 1, 10, 1e6):
        with_p = score(s, W, latency_ref=REF, priority=priority)
        np.testing.assert_allclose(with_p - base, W.priority * priority)
        assert best(with_p, s.tiebreak) == best(base, s.tiebreak)
    # ...so priority has to order the queue instead
    d = Dispatcher(ScorePolicy(W, REF, hold=False), Fleet())
    d.fleet.add("w")
    for i, p in enumerate([0, 10, 5]):
        d.submit(QueuedTask(key=f"t{p}", priority=p, kind="k", enqueued=float(i)))
    assert [a.task.key for a in d.dispatch(10.0)] == ["t10"]


def test_flaw_2_without_projected_load_a_batch_herds_onto_one_node():
    s = sig(4, slots=[2, 2, 2, 2], rtt=[0.01, 0.02, 0.03, 0.04])
    # the document: score once from the last reported load, enqueue every task on the winner
    scores = score(s, W, latency_ref=REF, include_task=False, priority=1)
    naive = [best(scores, s.tiebreak) for _ in range(8)]
    assert set(naive) == {0}
    # ours: each assignment is counted before the next decision
    d = Dispatcher(ScorePolicy(W, REF, hold=False), Fleet())
    for i in range(4):
        d.fleet.add(f"w{i}", nthreads=2)
    d.fleet.refresh(
        cpu=np.zeros(4), accel=np.zeros(4), rtt=s.rtt, other=np.zeros(4), eligible=np.ones(4, bool)
    )
    for i in range(4):  # half the capacity: only the projection can spread them
        d.submit(QueuedTask(key=i, priority=0, kind="k", enqueued=0.0))
    placed = [d.fleet.index[a.addr] for a in d.dispatch(0.0)]
    assert np.bincount(placed, minlength=4).tolist() == [1, 1, 1, 1]


def test_placement_key_sorts_best_first_with_a_deterministic_tie_break():
    scores = np.array([0.5, 0.7, 0.7 + 1e-15, 0.1])
    tiebreak = np.array([3, 2, 1, 0])
    order = np.argsort(placement_key(scores, tiebreak))
    assert order.tolist() == [2, 1, 0, 3]  # 1 and 2 tie (float noise); lower tiebreak wins
    assert best(scores, tiebreak) == 2
    # the same workers listed in another order pick the same worker
    perm = np.array([3, 1, 0, 2])
    assert perm[best(scores[perm], tiebreak[perm])] == 2


def test_best_respects_eligibility():
    scores = np.array([0.9, 0.1, 0.5])
    assert best(scores, np.arange(3), np.array([False, True, True])) == 2
    assert best(scores, np.arange(3), np.zeros(3, bool)) == -1
    assert best(np.zeros(0), np.zeros(0, int)) == -1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), slots=st.integers(1, 4), k=st.integers(0, 200))
def test_a_batch_over_idle_equal_workers_spreads_as_evenly_as_capacity_allows(n, slots, k):
    d = Dispatcher(ScorePolicy(W, REF), Fleet(), max_per_pass=10_000)
    for i in range(n):
        d.fleet.add(f"tcp://10.0.0.{i}:1", nthreads=slots)
    for j in range(k):
        d.submit(QueuedTask(key=j, priority=0, kind="k", enqueued=0.0))
    placed = d.dispatch(0.0)
    counts = np.bincount([d.fleet.index[a.addr] for a in placed], minlength=n)
    assert len(placed) == min(k, n * slots)  # every free slot is used, none over-filled
    assert counts.max() <= slots
    assert counts.max() - counts.min() <= 1  # as even as possible
    assert len(d.queue) == k - len(placed)  # the rest waits for capacity

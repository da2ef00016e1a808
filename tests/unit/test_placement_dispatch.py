"""Pull dispatch (pure): capacity, learning, predictions, the hold rule, express, settings."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from cluster_app.errors import ConfigError
from cluster_app.placement.dispatch import HOLD, NO_ROOM, Dispatcher, ScorePolicy, place
from cluster_app.placement.fleet import Fleet
from cluster_app.placement.queue import QueuedTask
from cluster_app.placement.settings import PlacementSettings

MS = 1e-3


def fleet_of(durations_ms, *, rtt_ms=None, overhead_ms=None, max_prefetch=0, kind="k") -> Fleet:
    """A fleet whose workers have already measured ``durations_ms`` for ``kind``."""
    n = len(durations_ms)
    f = Fleet(duration_alpha=1.0, max_prefetch=max_prefetch)
    for i in range(n):
        f.add(f"tcp://w{i}:1")
    rtt = np.full(n, 1.0) * MS if rtt_ms is None else np.asarray(rtt_ms) * MS
    f.refresh(
        cpu=np.zeros(n), accel=np.zeros(n), rtt=rtt, other=np.zeros(n), eligible=np.ones(n, bool)
    )
    for i, d in enumerate(durations_ms):
        f.record_duration(i, kind, d * MS)
        f.record_overhead(i, (overhead_ms[i] if overhead_ms else 1.0) * MS)
    return f


def queue(d: Dispatcher, n: int, priority: float = 0, start: int = 0, kind: str = "k") -> None:
    for j in range(start, start + n):
        d.submit(QueuedTask(key=j, priority=priority, kind=kind, enqueued=float(j) * 1e-6))


def counts(d: Dispatcher, assignments) -> list[int]:
    return np.bincount(
        [d.fleet.index[a.addr] for a in assignments], minlength=len(d.fleet)
    ).tolist()


def test_slowness_is_duration_over_the_fleet_median_per_kind():
    f = fleet_of([10, 10, 30])
    np.testing.assert_allclose(f.slowness("k"), [1, 1, 3])
    np.testing.assert_allclose(f.slowness("never-seen"), [1, 1, 1])
    f.record_duration(2, "other", 0.001)
    f.record_duration(0, "other", 0.004)
    np.testing.assert_allclose(f.slowness("other"), [1.6, 1.0, 0.4])  # unknown -> 1


def test_prefetch_hides_the_hand_over_overhead_only_where_it_matters():
    f = fleet_of([1000, 10, 0.1], overhead_ms=[5, 5, 5], max_prefetch=2)
    # 5 ms overhead: nothing for 1 s rounds, ceil(0.5) = 1 for 10 ms tasks, capped for tiny ones
    assert f.capacity("k").tolist() == [1, 2, 3]
    assert f.capacity("never-measured").tolist() == [1, 1, 1]
    assert fleet_of([10], overhead_ms=[5], max_prefetch=0).capacity("k").tolist() == [1]


def test_a_slow_worker_gets_less_of_a_batch_and_none_of_its_tail():
    d = Dispatcher(ScorePolicy(), fleet_of([10, 10, 30]))
    queue(d, 20)
    first = d.dispatch(0.0)
    assert counts(d, first) == [1, 1, 1]
    slow = next(a for a in first if a.addr == "tcp://w2:1")
    assert slow.task.key > 0  # it skipped tasks the fast workers finish sooner
    # the tail: two tasks left, every worker free again -> the slow one waits
    d2 = Dispatcher(ScorePolicy(), fleet_of([10, 10, 30]))
    queue(d2, 2)
    assert counts(d2, d2.dispatch(0.0)) == [1, 1, 0]
    assert len(d2.queue) == 0
    d3 = Dispatcher(ScorePolicy(), fleet_of([10, 10, 30]))
    queue(d3, 3)
    assert counts(d3, d3.dispatch(0.0)) == [1, 1, 0]  # the third waits for a fast worker
    assert len(d3.queue) == 1 and d3.holds_total >= 1


def test_a_lone_high_priority_task_waits_briefly_for_a_fast_worker_but_not_forever():
    f = fleet_of([10, 50])
    d = Dispatcher(ScorePolicy(), f)
    queue(d, 1)  # occupies the fast worker until ~11 ms
    assert counts(d, d.dispatch(0.0)) == [1, 0]
    d.submit(QueuedTask(key="hp", priority=10, kind="k", enqueued=0.001))
    # express: the fast worker runs it right after its current task (~22 ms) vs 51 ms on slow
    (a,) = d.dispatch(0.001)
    assert a.addr == "tcp://w0:1" and a.task.key == "hp"
    # a second one cannot jump the first; the fast worker still wins (~32 ms): it is held ...
    d.submit(QueuedTask(key="hp2", priority=10, kind="k", enqueued=0.002))
    assert d.dispatch(0.002) == []
    assert "hp2" in d.queue and d.queue.peek().held_since == 0.002
    assert d.dispatch(0.040) == []  # (no result came back: the fast worker still looks best)
    # ... but never for longer than running it on the free (slow) worker would take
    (a,) = d.dispatch(0.002 + 0.052)
    assert a.addr == "tcp://w1:1"


def test_without_the_hold_rule_the_free_worker_takes_it():
    d = Dispatcher(ScorePolicy(hold=False), fleet_of([10, 10, 30]))
    queue(d, 3)
    assert counts(d, d.dispatch(0.0)) == [1, 1, 1]


def test_a_high_latency_worker_is_the_last_choice():
    d = Dispatcher(ScorePolicy(hold=False), fleet_of([10, 10, 10], rtt_ms=[80, 1, 2]))
    queue(d, 1)
    assert counts(d, d.dispatch(0.0)) == [0, 1, 0]
    s = ScorePolicy().scores(d.fleet, "k")
    assert s[0] < s[2] < s[1]


def test_a_loaded_worker_is_avoided():
    f = fleet_of([10, 10])
    for i in (0, 1):
        f.nthreads[i] = 4
    f.refresh(
        cpu=np.array([0.9, 0.1]),
        accel=np.zeros(2),
        rtt=np.full(2, MS),
        other=np.array([3.0, 0.0]),  # three of its four slots run someone else's tasks
        eligible=np.ones(2, bool),
    )
    d = Dispatcher(ScorePolicy(hold=False), f)
    queue(d, 4)
    placed = d.dispatch(0.0)
    assert [a.addr for a in placed[:3]] == ["tcp://w1:1"] * 3  # the idle worker first
    assert counts(d, placed) == [1, 3]  # the loaded one only gets its last free slot


def test_express_lets_higher_priority_pass_prefetched_work_once():
    f = fleet_of([10])
    d = Dispatcher(ScorePolicy(hold=False), f)
    queue(d, 3)
    assert len(d.dispatch(0.0)) == 1  # capacity 1
    d.submit(QueuedTask(key="hp", priority=5, kind="k", enqueued=1.0))
    assert [a.task.key for a in d.dispatch(0.0)] == ["hp"]  # one above capacity
    assert d.dispatch(0.0) == []  # lower priority waits; so would another priority 5


def test_predictions_chain_and_correct_themselves():
    f = fleet_of([10], overhead_ms=[2], max_prefetch=2)
    d = Dispatcher(ScorePolicy(hold=False), f)
    queue(d, 3)
    a = d.dispatch(0.0)
    assert len(a) == 1 + 1  # 2 ms overhead / 10 ms > 0.1: one task prefetched
    ends = [x.entry[0] for x in a]
    np.testing.assert_allclose(ends, [0.011, 0.021])  # start after 1 ms, then back to back
    # the first result arrives 5 ms early: the second's prediction moves with it
    d.finished(a[0].task.key, duration=0.005, now=0.007)
    np.testing.assert_allclose(a[1].entry[0], 0.016)


def test_overhead_is_learned_from_tasks_that_found_a_thread_free():
    f = fleet_of([10], overhead_ms=[1], max_prefetch=2)
    f.overhead[:] = np.nan
    d = Dispatcher(ScorePolicy(hold=False), f)
    queue(d, 1)
    (a,) = d.dispatch(1.0)
    assert a.thread_free
    d.finished(a.task.key, duration=0.010, now=1.017)
    assert f.overhead[0] == pytest.approx(0.007)


def test_preferred_workers_are_kept_while_alive_like_dask_loose_restrictions():
    d = Dispatcher(ScorePolicy(hold=False), fleet_of([10, 10], rtt_ms=[1, 50]))
    w1 = frozenset({"tcp://w1:1"})
    d.submit(QueuedTask(key="p", priority=0, kind="k", enqueued=0, preferred=w1))
    d.submit(QueuedTask(key="q", priority=0, kind="k", enqueued=1, preferred=w1))
    d.submit(QueuedTask(key="r", priority=0, kind="k", enqueued=2))
    placed = {a.task.key: a.addr for a in d.dispatch(0.0)}
    # w1 scores worse (50 ms away) but was asked for; q waits for it; r takes the free w0
    assert placed == {"p": "tcp://w1:1", "r": "tcp://w0:1"}
    assert d.queue.peek().key == "q"
    d.fleet.set_eligible(1, False)  # paused: q still waits for it
    d.finished("r", 0.01, 0.02)
    assert d.dispatch(0.02) == []
    d.fleet.remove("tcp://w1:1")  # gone: q may go anywhere
    assert [(a.task.key, a.addr) for a in d.dispatch(0.02)] == [("q", "tcp://w0:1")]


def test_requeue_and_worker_loss_return_tasks_to_their_place():
    d = Dispatcher(ScorePolicy(hold=False), fleet_of([10, 10]))
    queue(d, 4)
    placed = d.dispatch(0.0)
    lost = [a for a in placed if a.addr == "tcp://w1:1"]
    d.fleet.remove("tcp://w1:1")
    for a in lost:
        assert d.requeue(a.task.key)
    assert d.requeue("unknown") is False
    assert d.queue.peek().key == lost[0].task.key  # ahead of tasks that never ran
    assert d.requeued_total == len(lost) and len(d.fleet) == 1


def test_nothing_eligible_means_nothing_dispatched():
    f = fleet_of([10, 10])
    f.eligible[:] = False
    d = Dispatcher(ScorePolicy(), f)
    queue(d, 3)
    assert d.dispatch(0.0) == [] and len(d.queue) == 3


def test_a_policy_is_a_small_object_tests_can_inject():
    class LastWorker:
        def choose(self, task, fleet, free, ahead, now):
            idx = np.flatnonzero(free)
            return place(int(idx[-1])) if len(idx) else NO_ROOM

    d = Dispatcher(LastWorker(), fleet_of([10, 10, 10]))
    queue(d, 1)
    assert counts(d, d.dispatch(0.0)) == [0, 0, 1]
    assert HOLD.hold and not HOLD.placed and not NO_ROOM.hold and place(2).row == 2


def test_decision_rate_counts_recent_assignments():
    d = Dispatcher(ScorePolicy(hold=False), fleet_of([10] * 4))
    queue(d, 4)
    d.dispatch(100.0)
    assert d.decision_rate(100.5) == pytest.approx(4.0)
    assert d.decision_rate(200.0) == 0.0


def test_settings_come_from_config_and_name_bad_values():
    s = PlacementSettings.from_config()
    assert s.weights == (0.6, 0.3, 0.1) and s.key_prefixes == ("agent-",)
    with dask.config.set({"cluster-app.placement.weights.load": 0.2}):
        assert PlacementSettings.from_config().weights.load == 0.2
    with (
        dask.config.set({"cluster-app.placement.aging": -1.0}),
        pytest.raises(ConfigError, match="placement.aging = -1.0"),
    ):
        PlacementSettings.from_config()
    with pytest.raises(ConfigError, match="unknown placement setting"):
        PlacementSettings.from_config(bogus=1)
    with pytest.raises(ConfigError, match="key_prefixes"):
        PlacementSettings(key_prefixes="agent-")
    d = s.build()
    assert isinstance(d.policy, ScorePolicy) and d.fleet.max_prefetch == s.max_prefetch


def test_a_saturated_fleet_costs_a_pass_one_pop_not_the_lookahead():
    d = Dispatcher(ScorePolicy(), fleet_of([10, 10]), lookahead=32)
    queue(d, 100)
    assert len(d.dispatch(0.0)) == 2  # one per thread
    pops = []
    pop = d.queue.pop
    d.queue.pop = lambda: pops.append(1) or pop()  # type: ignore[method-assign]
    assert d.dispatch(0.0) == []
    assert len(pops) == 1 and len(d.queue) == 98  # the one it looked at went back


def test_a_blocked_kind_does_not_stop_a_later_express_task_or_another_kind():
    f = fleet_of([10], max_prefetch=0)
    f.record_duration(0, "other", 0.01)
    d = Dispatcher(ScorePolicy(hold=False), f, aging=1.0)
    d.submit(QueuedTask(key="running", priority=0, kind="k", enqueued=0.0))
    assert len(d.dispatch(0.0)) == 1  # the worker's only thread is taken
    # old low-priority tasks aged past a new high-priority one: they pop first and find no
    # room; the high-priority one still passes them (express) in the same pass
    for j in range(3):
        d.submit(QueuedTask(key=f"old-{j}", priority=0, kind="k", enqueued=-100.0))
    d.submit(QueuedTask(key="urgent", priority=5, kind="k", enqueued=0.0))
    assert [a.task.key for a in d.dispatch(0.0)] == ["urgent"]
    assert len(d.queue) == 3


def test_learned_durations_wait_at_most_learn_interval_before_estimates_change():
    f = Fleet(duration_alpha=1.0, learn_interval=0.05)
    f.add("tcp://w0:1")
    f.record_duration(0, "k", 0.010)
    assert f.median_duration("k") == pytest.approx(0.010)  # a first measurement shows at once
    f.record_duration(0, "k", 0.020)
    assert f.median_duration("k") == pytest.approx(0.010)
    f.settle(0.0)
    assert f.median_duration("k") == pytest.approx(0.020)
    f.record_duration(0, "k", 0.030)
    assert f.median_duration("k") == pytest.approx(0.020)  # not yet
    f.settle(0.01)
    assert f.median_duration("k") == pytest.approx(0.020)  # 10 ms after the last settle
    f.settle(0.06)
    assert f.median_duration("k") == pytest.approx(0.030)
    immediate = fleet_of([10])  # learn_interval=0: every duration counts at once
    immediate.record_duration(0, "k", 0.02)
    assert immediate.median_duration("k") == pytest.approx(0.02)


def test_a_single_candidate_is_placed_without_scoring_the_fleet():
    policy = ScorePolicy(hold=False)
    d = Dispatcher(policy, fleet_of([10, 10]))
    queue(d, 2)
    assert len(d.dispatch(0.0)) == 2
    scored = []
    scores = policy.scores
    policy.scores = lambda fleet, kind: scored.append(kind) or scores(fleet, kind)  # type: ignore[method-assign]
    first = next(iter(d.inflight))
    freed = d.inflight[first].addr
    d.finished(first, 0.01, 0.02)  # one slot frees, on one worker
    queue(d, 1, start=10)
    (a,) = d.dispatch(0.03)
    assert a.addr == freed
    assert scored == []  # nothing to choose between: no score computed
    d.finished(a.task.key, 0.01, 0.04)
    d.finished(next(iter(d.inflight)), 0.01, 0.04)  # both free: now the score decides
    queue(d, 1, start=20)
    assert len(d.dispatch(0.05)) == 1 and scored == ["k"]

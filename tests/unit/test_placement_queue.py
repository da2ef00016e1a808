"""The placement queue: priority order, FIFO ties, aging, removal, re-queue."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_app.placement.queue import QueuedTask, TaskQueue


def task(key, priority=0.0, enqueued=0.0) -> QueuedTask:
    return QueuedTask(key=key, priority=priority, kind="k", enqueued=enqueued)


def drain(q: TaskQueue) -> list:
    out = []
    while (t := q.pop()) is not None:
        out.append(t.key)
    return out


def test_highest_priority_first_fifo_within_a_priority():
    q = TaskQueue()
    for i, p in enumerate([0, 5, 0, 5, 1]):
        q.push(task(f"t{i}", p, enqueued=float(i)))
    assert q.depth_by_priority() == {5: 2, 1: 1, 0: 2}
    assert drain(q) == ["t1", "t3", "t4", "t0", "t2"]
    assert len(q) == 0 and q.pop() is None and q.peek() is None


def test_fifo_ties_hold_even_for_equal_arrival_times():
    q = TaskQueue(aging=1.0)
    for i in range(50):
        q.push(task(i, 3, enqueued=7.0))
    assert drain(q) == list(range(50))


def test_aging_lets_a_long_waiting_low_priority_task_overtake():
    q = TaskQueue(aging=0.5)  # half a priority level per second of waiting
    q.push(task("old-low", 0, enqueued=0.0))
    q.push(task("new-high", 10, enqueued=19.0))  # at t=19 old-low has aged 9.5 levels
    assert q.peek().key == "new-high"
    q2 = TaskQueue(aging=0.5)
    q2.push(task("old-low", 0, enqueued=0.0))
    q2.push(task("new-high", 10, enqueued=21.0))  # at t=21 it has aged 10.5 levels
    assert q2.peek().key == "old-low"
    assert q2.effective_priority(q2.peek(), now=21.0) == pytest.approx(10.5)


def test_without_aging_low_priority_waits_behind_any_amount_of_high_priority():
    q = TaskQueue(aging=0.0)
    q.push(task("low", 0, enqueued=0.0))
    for i in range(100):
        q.push(task(i, 1, enqueued=1e6 + i))
    assert drain(q)[-1] == "low"


def test_remove_and_requeue_keep_the_original_place():
    q = TaskQueue()
    tasks = [task(i, 0, enqueued=float(i)) for i in range(5)]
    for t in tasks:
        q.push(t)
    assert q.remove(2) is tasks[2] and 2 not in q
    assert q.remove(2) is None
    first = q.pop()
    assert first.key == 0
    q.push(first)  # e.g. its worker died: it comes back first, not last
    assert drain(q) == [0, 1, 3, 4]


def test_pushing_a_queued_key_again_replaces_it():
    q = TaskQueue()
    q.push(task("a", 0))
    q.push(task("a", 9))
    assert len(q) == 1 and q.depth_by_priority() == {9: 1}
    assert drain(q) == ["a"]


def test_mass_removal_compacts_the_heap():
    q = TaskQueue()
    for i in range(1000):
        q.push(task(i, 0, float(i)))
    for i in range(990):
        q.remove(i)
    assert len(q._heap) < 100
    assert drain(q) == list(range(990, 1000))


def test_negative_aging_is_refused_with_the_value():
    with pytest.raises(ValueError, match="aging=-1"):
        TaskQueue(aging=-1)


@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.floats(0, 100), st.booleans()), min_size=0, max_size=60
    ),
    st.sampled_from([0.0, 0.1, 2.0]),
)
def test_pop_order_is_effective_priority_then_arrival(items, aging):
    q = TaskQueue(aging=aging)
    kept = []
    for i, (prio, enq, removed) in enumerate(items):
        q.push(task(i, prio, enq))
        if removed:
            q.remove(i)
        else:
            kept.append((aging * enq - prio, i))
    assert drain(q) == [i for _, i in sorted(kept)]

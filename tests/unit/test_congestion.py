from __future__ import annotations

import itertools
import threading
import time

import pytest

from cluster_app.sync.congestion import AIMDWindow, WindowedExecutor


def test_window_grows_while_latency_is_stable():
    w = AIMDWindow(initial=2, maximum=16)
    for _ in range(200):
        w.update(0.01)
    assert w.size == 16


def test_window_halves_when_latency_rises_and_recovers():
    w = AIMDWindow(initial=8, maximum=8)
    for _ in range(20):
        w.update(0.01)
    w.update(0.1)
    assert w.size == 4
    for _ in range(200):
        w.update(0.01)
    assert w.size == 8


def test_one_decrease_per_round_trip():
    w = AIMDWindow(initial=8, maximum=8)
    for _ in range(20):
        w.update(0.01)
    for _ in range(3):  # a burst of slow completions: only the first halves the window
        w.update(0.1)
    assert w.size == 4


def test_bad_bounds():
    with pytest.raises(ValueError, match="minimum <= initial <= maximum"):
        AIMDWindow(initial=10, maximum=4)


class CongestedStore:
    """A store whose write latency grows with the number of concurrent writers."""

    def __init__(self, base=0.002, per_writer=0.003):
        self.base, self.per_writer = base, per_writer
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def write(self):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            n = self.active
        time.sleep(self.base + self.per_writer * n)
        with self.lock:
            self.active -= 1


def test_executor_backs_off_on_a_congested_store():
    store = CongestedStore()
    ex = WindowedExecutor(AIMDWindow(initial=2, maximum=32, tolerance=2.0))
    try:
        ex.run([store.write] * 400)
    finally:
        ex.close()
    sizes = [s for _, s in ex.window.trace]
    assert max(sizes) > 2  # it probed upwards ...
    assert any(b < a for a, b in itertools.pairwise(sizes))  # ... and halved when latency rose
    # it settles where latency is ~tolerance x the uncongested one: far below the 32 allowed
    assert sum(sizes[-100:]) / 100 < 8
    assert store.peak < 32


def test_executor_reraises_job_failures():
    ex = WindowedExecutor(AIMDWindow(initial=2, maximum=4))

    def boom():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ex.run([lambda: None, boom, lambda: None])
    ex.close()

"""Capacity-driven (pull) dispatch: the pure core of the placement plugin.

A :class:`Dispatcher` owns the :class:`~cluster_app.placement.queue.TaskQueue` and the
:class:`~cluster_app.placement.fleet.Fleet`. :meth:`Dispatcher.dispatch` pops tasks in queue
order (priority, then arrival, with aging) while some worker has a free slot, asks the
placement policy for a worker, and counts the task on that worker at once, so the next
decision of the same pass already sees the projected load (fix 2 of the source document).

Policies are small objects with one method, ``choose``. The default :class:`ScorePolicy`
picks the best-scoring available worker (:func:`~cluster_app.placement.scoring.score`) among
those that pass a *hold* rule: the score decides *where*, the hold rule decides *whether now*.
With ``finish`` the time a worker would have the result back to the scheduler (when the task
could start there, given what the worker holds and Dask's worker-side priority order, plus
its measured duration for the kind of task and its hand-over overhead; see
:meth:`~cluster_app.placement.fleet.Fleet.expected_result`), a worker passes if

    finish_i  <=  (1 + margin) * (min_j finish_j + ahead / rate)

over all eligible workers ``j``, busy or not, where ``ahead`` is the number of tasks held
earlier in this pass and ``rate`` the fleet's throughput for this kind (sum of threads /
run). If no available worker passes, the task is held: it waits in the queue for a worker
that will finish it sooner. In the thick of a batch ``ahead`` grows quickly, so a slow worker
still takes work, just from further down the queue; at the end of a batch, or for a lone
high-priority task, the slow worker waits and a fast one finishes first. A task is never held
for longer than its expected run on the quickest available worker, which bounds the cost of a
wrong estimate to about 2x.

*Available* means below the worker's capacity for this kind of task (threads plus a prefetch
that hides its measured hand-over overhead, see
:meth:`~cluster_app.placement.fleet.Fleet.capacity`), or one above it for a task that
outranks everything the worker holds (Dask workers run ready tasks by priority, so it only
waits for the running task). Tasks with preferred workers (``workers=[...],
allow_other_workers=True``) wait for one of them while any is in the cluster, as the run
controller's shard layout expects, and go anywhere once they are all gone.

Pure Python + numpy; runs on the caller's thread (the scheduler's event loop in the plugin).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import NamedTuple, Protocol

import numpy as np

from cluster_app.errors import SpecError
from cluster_app.placement.fleet import Fleet
from cluster_app.placement.queue import QueuedTask, TaskQueue
from cluster_app.placement.scoring import Weights, best, latency, load, score

__all__ = [
    "HOLD",
    "NO_ROOM",
    "Decision",
    "Dispatcher",
    "PlacementPolicy",
    "ScorePolicy",
    "place",
]


class Decision(NamedTuple):
    """A policy's answer for one task: run it on fleet row ``row`` now, or leave it queued,
    either held (``hold``: a better worker will be free soon) or for want of room."""

    row: int | None = None
    hold: bool = False

    @property
    def placed(self) -> bool:
        return self.row is not None


HOLD = Decision(hold=True)  # wait for a worker that would finish it sooner
NO_ROOM = Decision()  # no eligible worker has room for it now


def place(row: int) -> Decision:
    """Run on fleet row ``row``; a negative row (as :func:`~.scoring.best` returns when no
    worker qualifies) means no room."""
    return Decision(row) if row >= 0 else NO_ROOM


class PlacementPolicy(Protocol):
    """Chooses where (or whether now) one task runs."""

    def choose(
        self, task: QueuedTask, fleet: Fleet, free: np.ndarray, ahead: int, now: float
    ) -> Decision: ...


class ScorePolicy:
    """Best-scoring available worker that passes the hold rule (see the module docstring).

    A task with preferred workers (Dask's loose restrictions) goes to the best of them that
    is free, and waits for one while any is still in the cluster.

    Parameters
    ----------
    weights : Weights
    latency_ref : float
        Round trip (seconds) that maps to latency 1 in the score.
    hold : bool
        Apply the hold rule of the module docstring.
    hold_margin : float
        Relative margin the alternative must win by before a task is held (>= 0).
    """

    def __init__(
        self,
        weights: Weights = Weights(),
        latency_ref: float = 0.1,
        hold: bool = True,
        hold_margin: float = 0.2,
    ) -> None:
        if not latency_ref > 0:
            raise SpecError(f"latency_ref={latency_ref!r} must be > 0 seconds")
        if not hold_margin >= 0:
            raise SpecError(f"hold_margin={hold_margin!r} must be >= 0")
        self.weights = weights.validated()
        self.latency_ref = float(latency_ref)
        self.hold = hold
        self.hold_margin = float(hold_margin)
        self._memo_state: tuple | None = None
        self._memo: dict[tuple, tuple] = {}

    def scores(self, fleet: Fleet, kind: str) -> np.ndarray:
        """Every worker's score for a task of ``kind`` given the fleet's projected load."""
        return score(fleet.signals(kind), self.weights, latency_ref=self.latency_ref)

    def choose(
        self, task: QueuedTask, fleet: Fleet, free: np.ndarray, ahead: int, now: float
    ) -> Decision:
        if task.preferred:
            # allow_other_workers=True: a preferred worker while one is in the cluster (the
            # caller chose it, e.g. the run controller's shard layout), even if it is busy,
            # paused or still starting; any worker once all of them are gone
            pref = np.fromiter((a in task.preferred for a in fleet.addrs), bool, len(fleet))
            if pref.any():
                i = self._best(fleet, task.kind, free & pref)
                return place(i) if i >= 0 else HOLD  # wait for it
        # tasks of one kind and priority look alike until the fleet changes: while a pass
        # holds one after another, only the cheap threshold test below is repeated
        state = (fleet.version, now, id(free))
        if self._memo_state != state:
            self._memo_state, self._memo = state, {}
        memo = self._memo.get((task.kind, task.priority))
        if memo is None:
            memo = self._memo[task.kind, task.priority] = self._prepare(task, fleet, free, now)
        return self._pick(task, fleet, free, ahead, now, memo)

    def _prepare(self, task: QueuedTask, fleet: Fleet, available: np.ndarray, now: float) -> tuple:
        """What the hold rule needs: (finish per worker, quickest available, target, rate)."""
        result = fleet.expected_result(task.kind, task.priority, now) if self.hold else None
        if result is None or not available.any():
            return (None, 0.0, 0.0, 1.0)
        finish = result - now
        eligible = fleet.eligible
        rate = float(np.sum(fleet.throughput(task.kind)[eligible]))
        return (finish, float(np.min(finish[available])), float(np.min(finish[eligible])), rate)

    def _pick(
        self,
        task: QueuedTask,
        fleet: Fleet,
        available: np.ndarray,
        ahead: int,
        now: float,
        memo: tuple,
    ) -> Decision:
        finish, quickest, target0, rate = memo
        if finish is not None and not (
            task.held_since is not None and now - task.held_since >= quickest
        ):  # (a task is never held longer than running it on the quickest free worker)
            threshold = (1.0 + self.hold_margin) * (target0 + ahead / max(rate, 1e-9))
            if quickest > threshold:
                return HOLD
            available = available & (finish <= threshold)
        return place(self._best(fleet, task.kind, available))

    def _best(self, fleet: Fleet, kind: str, available: np.ndarray) -> int:
        """The best-scoring worker of ``available`` (-1: none); scored only if there is a
        choice (on a saturated fleet a slot frees on one worker at a time)."""
        candidates = np.flatnonzero(available)
        if len(candidates) <= 1:
            return int(candidates[0]) if len(candidates) else -1
        return best(self.scores(fleet, kind), fleet.tiebreak, available)


class Assignment(NamedTuple):
    """A task handed to a worker by :meth:`Dispatcher.dispatch`."""

    task: QueuedTask
    addr: str
    entry: list[float]  # the fleet's prediction for it (see Fleet.assign)
    dispatched: float
    thread_free: bool  # it could start at once: its turnaround measures the overhead


class Dispatcher:
    """Queue + fleet + policy: decides which queued task goes to which free worker.

    Parameters
    ----------
    policy : PlacementPolicy
    fleet : Fleet
    aging : float
        Priority levels gained per second of waiting.
    lookahead : int
        Held tasks after which a pass stops looking further down the queue.
    max_per_pass : int
        Assignments after which a pass returns (the caller runs another one soon), so a
        huge backlog never blocks the scheduler's event loop for long.
    """

    def __init__(
        self,
        policy: PlacementPolicy,
        fleet: Fleet,
        aging: float = 0.0,
        lookahead: int = 32,
        max_per_pass: int = 256,
    ) -> None:
        if lookahead < 1 or max_per_pass < 1:
            raise SpecError(
                f"lookahead={lookahead!r} and max_per_pass={max_per_pass!r} must be >= 1"
            )
        self.policy = policy
        self.fleet = fleet
        self.queue = TaskQueue(aging)
        self.lookahead = lookahead
        self.max_per_pass = max_per_pass
        self.inflight: dict[Hashable, Assignment] = {}
        self.decisions_total = 0
        self.holds_total = 0
        self.requeued_total = 0
        self._recent: deque[tuple[float, int]] = deque()

    # ------------------------------------------------------------------ task lifecycle
    def submit(self, task: QueuedTask) -> None:
        """A task became runnable: queue it (again, if it was dispatched before: its worker
        died, it is retried, or the hand-over failed; it keeps its old place)."""
        if task.attempts:
            self.requeued_total += 1
            task.held_since = None
        self.queue.push(task)

    def dispatch(self, now: float) -> list[Assignment]:
        """Assign queued tasks to free workers until none is free or the queue is exhausted.

        Returns the assignments, already counted in the fleet (projected load).
        """
        out: list[Assignment] = []
        fleet, queue = self.fleet, self.queue
        fleet.settle(now)
        if not len(queue) or not len(fleet) or not fleet.eligible.any():
            return out
        held: list[QueuedTask] = []
        # kind -> the priority at which no worker had room for it: for the rest of the pass no
        # task of that kind and no higher priority finds room (the pass only adds load)
        blocked: dict[str, float] = {}
        frees: dict[tuple, np.ndarray] = {}
        room_version, room = -1, True
        while len(out) < self.max_per_pass:
            if room_version != fleet.version:  # can any worker take any task at all?
                room_version = fleet.version
                limit = fleet.nthreads + fleet.max_prefetch + 1
                room = bool((fleet.eligible & (fleet.busy + fleet.other < limit)).any())
            if not room:
                break
            task = queue.pop()
            if task is None:
                break
            # express needs a prediction: without one it could strand a task behind a long one
            known = not math.isnan(fleet.median_duration(task.kind))
            fkey = (fleet.version, task.kind, task.priority if known else None)
            free = frees.get(fkey)
            if free is None:
                free = frees[fkey] = fleet.free(task.kind, fkey[2])
            decision = (
                self.policy.choose(task, fleet, free, len(held), now) if free.any() else NO_ROOM
            )
            if decision.row is None:
                if decision.hold:
                    self.holds_total += 1
                    if task.held_since is None:
                        task.held_since = now
                elif not free.any():
                    # (room depends on priority only for a task whose duration is known)
                    at = task.priority if known else math.inf
                    blocked[task.kind] = max(at, blocked.get(task.kind, -math.inf))
                held.append(task)  # (or no worker has room for this kind of task now)
                if len(held) >= self.lookahead or self._all_blocked(blocked):
                    break  # (a saturated fleet costs a pass one pop, not ``lookahead``)
                continue
            i = decision.row
            thread_free = bool(fleet.thread_free(i))
            task.attempts += 1
            entry = fleet.assign(i, task.kind, task.priority, now)
            a = Assignment(task, fleet.addrs[i], entry, now, thread_free)
            self.inflight[task.key] = a
            out.append(a)
        for task in held:
            queue.push(task)
        if out:
            self.decisions_total += len(out)
            self._recent.append((now, len(out)))
        return out

    def _all_blocked(self, blocked: dict[str, float]) -> bool:
        """No task still queued can find room in this pass (see ``dispatch``)."""
        queue = self.queue
        if not blocked or not queue.kinds() <= blocked.keys():
            return False
        top = queue.max_priority()
        return top is None or top <= min(blocked.values())

    def finished(
        self, key: Hashable, duration: float | None = None, now: float | None = None
    ) -> Assignment | None:
        """A dispatched task left its worker (done, erred, cancelled or lost).

        ``duration`` is its compute time if it completed; with ``now`` (when its result
        reached the scheduler) it also measures the worker's hand-over overhead.
        """
        a = self.inflight.pop(key, None)
        if a is not None:
            i = self.fleet.index.get(a.addr)
            if i is not None:
                self.fleet.release(i, a.entry, now if duration is not None else None)
                if duration is not None:
                    self.fleet.record_duration(i, a.task.kind, duration)
                    if now is not None and a.thread_free:
                        self.fleet.record_overhead(i, now - a.dispatched - duration)
        return a

    def requeue(self, key: Hashable) -> bool:
        """A dispatched task came back (worker lost, retry, failed hand-over): queue it again.

        It keeps its arrival time and sequence number, so it returns to its old place.
        """
        a = self.finished(key)
        if a is None:
            return False
        self.submit(a.task)
        return True

    def discard(self, key: Hashable) -> None:
        """Forget a task wherever it is (released, cancelled, forgotten)."""
        self.queue.remove(key)
        self.finished(key)

    # ------------------------------------------------------------------ observability
    def decision_rate(self, now: float, window: float = 10.0) -> float:
        """Assignments per second over the last ``window`` seconds."""
        recent = self._recent
        while recent and recent[0][0] < now - window:
            recent.popleft()
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / max(span, min(window, 1.0))

    def worker_view(self, kind: str) -> dict[str, np.ndarray]:
        """Per-worker signals and the score a task of ``kind`` would see now."""
        fleet = self.fleet
        sig = fleet.signals(kind)
        view = {
            "cpu": sig.cpu,
            "accel": sig.accel,
            "busy": sig.busy,
            "capacity": sig.slots,
            "slowness": sig.slowness,
            "rtt": sig.rtt,
            "overhead": fleet.overhead_filled(),
            "duration": fleet.dur.get(kind, np.full(len(fleet), np.nan)),
            "assigned_total": fleet.assigned,
            "eligible": fleet.eligible,
        }
        if isinstance(self.policy, ScorePolicy):
            view["load"] = load(sig)
            view["latency"] = latency(sig, self.policy.latency_ref)
            view["score"] = self.policy.scores(fleet, kind)
        return view

    @staticmethod
    def finite(x: float) -> float | None:
        """JSON-friendly float (None for nan/inf)."""
        return float(x) if math.isfinite(x) else None

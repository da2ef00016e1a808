"""The scheduler-side queue of agent tasks: highest priority first, FIFO within a priority,
with aging so that low priority cannot starve.

A task waiting ``w`` seconds has the *effective* priority ``priority + aging * w``. Because
``aging * now`` is the same for every task at a given moment, ordering by effective priority is
ordering by the static key ``aging * enqueued - priority``: a binary heap on that key (plus an
arrival sequence number for FIFO ties) gives O(log n) push and pop and exact aging without
ever re-sorting. A task that comes back (its worker died, or it is retried) keeps its original
arrival time and sequence number, so it returns to the place it had.

Pure Python; runs on whatever thread calls it (the scheduler's event loop in the plugin).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Hashable, Iterator, KeysView
from dataclasses import dataclass, field

from cluster_app.errors import SpecError

__all__ = ["QueuedTask", "TaskQueue"]


@dataclass(eq=False)
class QueuedTask:
    """One agent task as the queue sees it.

    Attributes
    ----------
    key : hashable
        The Dask key.
    priority : float
        User priority (higher runs first), as given to ``client.submit(priority=...)``.
    kind : str
        What kind of task it is (its key prefix); durations are compared per kind.
    enqueued : float
        When it first became runnable (monotonic seconds); kept across re-queues.
    preferred : frozenset of str, optional
        Workers it prefers (loose restrictions), used when one of them is free.
    seq : int
        Arrival order, assigned by the queue on first push.
    held_since : float, optional
        When a placement policy first chose to wait for a better worker (see dispatch).
    attempts : int
        How many times it was handed to a worker.
    """

    key: Hashable
    priority: float
    kind: str
    enqueued: float
    preferred: frozenset[str] | None = None
    seq: int = -1
    held_since: float | None = None
    attempts: int = 0
    _token: int = field(default=-1, repr=False)


class TaskQueue:
    """Priority queue with FIFO ties, aging and O(1) removal by key (lazy deletion).

    Parameters
    ----------
    aging : float
        Priority levels a task gains per second of waiting (>= 0; 0 disables aging).
    """

    def __init__(self, aging: float = 0.0) -> None:
        if not aging >= 0:
            raise SpecError(f"aging={aging!r} must be >= 0 priority levels per second")
        self.aging = float(aging)
        self._heap: list[tuple[float, int, int, QueuedTask]] = []
        self._live: dict[Hashable, QueuedTask] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count()
        self._by_priority: Counter[float] = Counter()
        self._by_kind: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[QueuedTask]:
        """Live tasks in no particular order."""
        return iter(list(self._live.values()))

    def effective_priority(self, task: QueuedTask, now: float) -> float:
        """``priority + aging * (now - enqueued)``."""
        return task.priority + self.aging * (now - task.enqueued)

    def push(self, task: QueuedTask) -> None:
        """Add ``task`` (or put it back after a pop); a key already queued is replaced."""
        if task.key in self._live:
            self.remove(task.key)
        if task.seq < 0:
            task.seq = next(self._seq)
        task._token = next(self._tokens)
        sort_key = self.aging * task.enqueued - task.priority
        heapq.heappush(self._heap, (sort_key, task.seq, task._token, task))
        self._live[task.key] = task
        self._by_priority[task.priority] += 1
        self._by_kind[task.kind] += 1

    def pop(self) -> QueuedTask | None:
        """Remove and return the task with the highest effective priority (None if empty)."""
        heap = self._heap
        while heap:
            _, _, token, task = heapq.heappop(heap)
            if self._live.get(task.key) is task and task._token == token:
                del self._live[task.key]
                self._forget(task)
                return task
        return None

    def peek(self) -> QueuedTask | None:
        """The task :meth:`pop` would return, without removing it."""
        heap = self._heap
        while heap:
            _, _, token, task = heap[0]
            if self._live.get(task.key) is task and task._token == token:
                return task
            heapq.heappop(heap)  # a stale entry left by remove()
        return None

    def remove(self, key: Hashable) -> QueuedTask | None:
        """Remove ``key`` if queued (O(1); its heap entry is skipped later)."""
        task = self._live.pop(key, None)
        if task is not None:
            self._forget(task)
            if len(self._heap) > 64 and len(self._heap) > 4 * len(self._live):
                self._compact()
        return task

    def depth_by_priority(self) -> dict[float, int]:
        """Number of queued tasks per priority, highest priority first."""
        return dict(sorted(self._by_priority.items(), reverse=True))

    def max_priority(self) -> float | None:
        """The highest static priority queued (None if empty)."""
        return max(self._by_priority, default=None)

    def kinds(self) -> KeysView[str]:
        """The kinds of task queued now (a live view)."""
        return self._by_kind.keys()

    def _forget(self, task: QueuedTask) -> None:
        _decrement(self._by_priority, task.priority)
        _decrement(self._by_kind, task.kind)

    def _compact(self) -> None:
        # mass cancellation leaves mostly stale entries; rebuild so memory stays O(live)
        self._heap = [
            e for e in self._heap if self._live.get(e[3].key) is e[3] and e[2] == e[3]._token
        ]
        heapq.heapify(self._heap)


def _decrement(counts: Counter, value: Hashable) -> None:
    n = counts[value] - 1
    if n:
        counts[value] = n
    else:
        del counts[value]

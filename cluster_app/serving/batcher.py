"""Dynamic batching with a bounded queue delay and a bounded queue (asyncio).

Requests with the same key (the served version and the completion-length bucket) wait together
until the batch is full (``max_batch``) or the first of them has waited ``window`` seconds, as
Triton's dynamic batcher and Ray's ``serve.batch`` do; the batch then goes out as one call of
``dispatch``. At most ``max_in_flight`` batches run at once; while all are running, requests
keep gathering, and a finishing batch sends out everything that waited (continuous batching):
under load batches grow instead of queueing one by one. A request beyond ``max_queue``
(waiting or in flight) is refused at once with :class:`Overloaded` (the gateway answers 429 with
``Retry-After``), never queued without bound.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "Overloaded"]


class Overloaded(Exception):
    """The queue is full; ``retry_after`` seconds is a fair wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"overloaded: retry after {retry_after:.0f}s")
        self.retry_after = retry_after


@dataclass
class _Pending:
    items: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    timer: asyncio.Handle | None = None


class Batcher:
    """Groups requests by key into batches for ``dispatch(key, payloads) -> results``."""

    def __init__(
        self,
        dispatch: Callable[[Hashable, list[Any]], Awaitable[list[Any]]],
        *,
        window: float,
        max_batch: int,
        max_queue: int,
        max_in_flight: int,
    ) -> None:
        self.dispatch = dispatch
        self.window, self.max_batch, self.max_queue = window, max_batch, max_queue
        self._max_in_flight = max_in_flight
        self._running = 0  # batches dispatched and not yet answered
        self._waiting: set[Hashable] = set()  # keys whose batch waits for a slot
        self._pending: dict[Hashable, _Pending] = {}
        self.queued = 0  # requests waiting or in flight
        self.batches = 0
        self.batch_sizes: list[int] = []
        self._recent = 0.05  # seconds a batch took lately (for Retry-After)
        self._tasks: set[asyncio.Future] = set()

    async def submit(self, key: Hashable, payload: Any) -> Any:
        if self.queued >= self.max_queue:
            drain = self._recent * math.ceil(self.queued / self.max_batch)
            raise Overloaded(max(1.0, math.ceil(drain)))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(key, _Pending())
        pending.items.append((payload, fut))
        self.queued += 1
        if len(pending.items) >= self.max_batch:
            self._flush(key)
        elif pending.timer is None:
            pending.timer = asyncio.get_running_loop().call_later(self.window, self._flush, key)
        try:
            return await fut
        finally:
            self.queued -= 1

    def _flush(self, key: Hashable) -> None:
        pending = self._pending.get(key)
        if pending is None or not pending.items:
            return
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if self._running >= self._max_in_flight:
            self._waiting.add(key)  # sent when a running batch finishes, with what joined it
            return
        self._running += 1
        batch, pending.items = pending.items[: self.max_batch], pending.items[self.max_batch :]
        if pending.items:  # more than a batch waited: the rest go next, without a new wait
            pending.timer = asyncio.get_running_loop().call_soon(self._flush, key)
        task = asyncio.ensure_future(self._run(key, batch))
        self._tasks.add(task)  # (asyncio keeps only weak references to tasks)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, batch: list[tuple[Any, asyncio.Future]]) -> None:
        t0 = time.perf_counter()
        try:
            results = await self.dispatch(key, [p for p, _ in batch])
        except Exception as e:  # every waiter learns why
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._recent = 0.8 * self._recent + 0.2 * (time.perf_counter() - t0)
            self.batches += 1
            self.batch_sizes.append(len(batch))
            del self.batch_sizes[:-1000]
            self._running -= 1
            if self._waiting:  # a slot is free: a waiting key goes now
                self._flush(self._waiting.pop())
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

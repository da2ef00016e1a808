"""Heterogeneous workers on one machine, for tests and benchmarks: slower CPUs, longer wires.

:class:`Handicap` is a ``WorkerPlugin`` that gives chosen workers (by name) a *slowdown*,
which :func:`work` reads to stretch the emulated compute time of a task, and a one-way network
*delay*, applied to everything the worker exchanges with the scheduler: messages arriving on
its scheduler stream, messages it sends through its batched stream (task results), and its
RPC calls to the scheduler (heartbeats, hence the measured round trip). Each direction goes
through an order-preserving delay line, so the worker behaves as if the scheduler were
``delay`` seconds away, including Dask's ability to hide that distance by sending work ahead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from distributed import WorkerPlugin, get_worker

from cluster_app.errors import SpecError

__all__ = ["HANDICAP_NAME", "Handicap", "noop", "slowdown", "work"]

HANDICAP_NAME = "cluster-app-handicap"


class _DelayLine:
    """Calls functions ``delay`` seconds after they were put, in the order they were put."""

    def __init__(self, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        self.delay, self.loop = delay, loop
        self.items: deque[tuple[float, Callable, tuple, dict]] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.pending: set[asyncio.Future] = set()  # keep coroutine handlers alive until done

    def put(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        self.items.append((self.loop.time() + self.delay, fn, args, kwargs))
        if self.handle is None:
            self.handle = self.loop.call_at(self.items[0][0], self._drain)

    def _drain(self) -> None:
        self.handle = None
        now = self.loop.time()
        while self.items and self.items[0][0] <= now:
            _, fn, args, kwargs = self.items.popleft()
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                fut = asyncio.ensure_future(result)
                self.pending.add(fut)
                fut.add_done_callback(self.pending.discard)
        if self.items:
            self.handle = self.loop.call_at(self.items[0][0], self._drain)


class _DelayedRPC:
    """Wraps ``worker.scheduler`` so every call waits ``delay`` each way."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        method = cast("Callable[..., Awaitable[Any]]", attr)  # an RPC call: a coroutine function

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(self._delay)
            result = await method(*args, **kwargs)
            await asyncio.sleep(self._delay)
            return result

        return call


class Handicap(WorkerPlugin):
    """Makes the workers named in ``profiles`` slower and/or further from the scheduler.

    Parameters
    ----------
    profiles : mapping
        ``{worker name: (slowdown, one_way_delay_seconds)}``; workers not listed are
        unaffected (slowdown 1, no delay). ``LocalCluster`` names its workers 0, 1, ...
    """

    name = HANDICAP_NAME
    idempotent = True

    def __init__(self, profiles: Mapping[Any, tuple[float, float]]) -> None:
        for name, (slow, delay) in profiles.items():
            if not (slow > 0 and delay >= 0):
                raise SpecError(
                    f"handicap of worker {name!r} = ({slow!r}, {delay!r}); expected "
                    "slowdown > 0 and delay >= 0"
                )
        self.profiles = {str(k): (float(s), float(d)) for k, (s, d) in profiles.items()}
        self.state: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict:
        return {"profiles": self.profiles}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def profile(self, worker) -> tuple[float, float]:
        """(slowdown, delay) of ``worker``."""
        return self.profiles.get(str(worker.name), (1.0, 0.0))

    def setup(self, worker) -> None:
        """Install the delays (worker event loop)."""
        slow, delay = self.profile(worker)
        st: dict[str, Any] = {"slowdown": slow, "delay": delay}
        self.state[worker.address] = st
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        inbound, outbound = _DelayLine(delay, loop), _DelayLine(delay, loop)
        st["handlers"] = dict(worker.stream_handlers)
        for op, handler in st["handlers"].items():
            if op == "close":  # shutting down should not wait for the wire
                continue
            worker.stream_handlers[op] = lambda _h=handler, **msg: inbound.put(_h, **msg)
        original_send = worker.batched_send
        st["batched_send"] = original_send
        worker.batched_send = lambda msg: outbound.put(original_send, msg)
        st["scheduler"] = worker.scheduler
        # a duck-typed stand-in for the worker's PooledRPCCall to the scheduler
        worker.scheduler = _DelayedRPC(  # pyright: ignore[reportAttributeAccessIssue]
            worker.scheduler, delay
        )

    def teardown(self, worker) -> None:
        """Remove the delays (worker event loop)."""
        st = self.state.pop(worker.address, None)
        if not st or "handlers" not in st:
            return
        worker.stream_handlers.update(st["handlers"])
        worker.batched_send = st["batched_send"]
        worker.scheduler = st["scheduler"]


def slowdown() -> float:
    """The slowdown of the worker running the current task (1 without a handicap)."""
    worker = get_worker()
    plugin = worker.plugins.get(HANDICAP_NAME)
    if plugin is None:
        return 1.0
    # (the plugin registered under HANDICAP_NAME is a Handicap)
    return cast(Handicap, plugin).state.get(worker.address, {}).get("slowdown", 1.0)


def work(seconds: float, result: Any = None) -> Any:
    """A task body: sleep ``seconds`` times this worker's slowdown, then return ``result``.

    Sleeping stands in for compute so that many emulated workers share two cores without
    disturbing each other's timings.
    """
    time.sleep(seconds * slowdown())
    return result


def noop(x: Any) -> Any:
    """A task body that returns its argument: the scheduler's per-task cost, nothing else.

    Defined in an installed module on purpose: a scheduler deserializes every task it is sent,
    so on a scheduler in its own process a function from a module it cannot import (a
    benchmark imported by name, not run as ``__main__``) fails there.
    """
    return x

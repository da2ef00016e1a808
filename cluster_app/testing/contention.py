"""Contention on one ref: processes that each land updates by compare-and-swap with retry.

Used by the tests (local disk and S3) and the registry benchmark: with every update retried
until it lands, the ref's log must hold every update, each entry's ``previous`` the entry
before's target: no update lost, none overwritten.
"""

from __future__ import annotations

import multiprocessing as mp
import time

from cluster_app.errors import RefConflict
from cluster_app.versions.refs import RefEntry
from cluster_app.versions.registry import Registry

__all__ = ["contend"]


def _updates(url: str, options: dict | None, worker: int, n: int, q) -> None:
    reg = Registry(url, options)
    landed, conflicts = [], 0
    for i in range(n):
        while True:
            head = reg.refs.target("heads", "main")
            try:
                reg.refs.update("heads", "main", f"w{worker}-{i}", head, action="commit")
                landed.append(f"w{worker}-{i}")
                break
            except RefConflict:
                conflicts += 1
                time.sleep(0.0005 * (worker + 1))  # a little backoff, staggered
    q.put((landed, conflicts))


def contend(
    url: str, options: dict | None = None, workers: int = 4, n: int = 12
) -> tuple[list[RefEntry], list[str], int]:
    """Run ``workers`` processes landing ``n`` updates each on branch ``main`` of the registry
    at ``url``; returns ``(the branch's log, the updates that landed, conflicts retried)``."""
    Registry(url, options).refs.update("heads", "main", "root", None, action="branch")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_updates, args=(url, options, w, n, q)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"a contending process exited with {p.exitcode}")
    landed = [t for got, _ in results for t in got]
    return Registry(url, options).refs.log("heads", "main"), landed, sum(c for _, c in results)

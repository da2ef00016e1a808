"""Worker preload of ``cluster-app up``: Ctrl-C in its terminal is for ``up`` alone.

A terminal sends SIGINT to the whole foreground process group, the worker processes too; they
would die at once with a ``KeyboardInterrupt`` each, while ``up`` is closing them in order. With
this preload a worker ignores SIGINT (SIGTERM, the nanny's and ``up``'s own way of stopping it,
is untouched). Workers a nanny restarts run it again.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["dask_setup"]


def dask_setup(worker) -> None:
    if threading.current_thread() is threading.main_thread():  # signals are the main thread's
        signal.signal(signal.SIGINT, signal.SIG_IGN)

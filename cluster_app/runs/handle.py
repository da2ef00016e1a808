"""``RunHandle``: a client's view of a durable run (submitted here or attached to by id)."""

from __future__ import annotations

import time

from distributed import Client, Future

from cluster_app.errors import RunError
from cluster_app.runs.durable import controller_key, launch
from cluster_app.runs.record import DONE, RunRecord
from cluster_app.runs.spec import RunSpec, spec_from_dict, spec_to_dict
from cluster_app.sync.store import ParamStore

__all__ = ["RunHandle"]


class RunHandle:
    """Watch and steer one run: ``status``, ``pause``, ``resume``, ``stop``, ``wait``.

    Everything goes through the run's record in the store, so any client (or none) may hold a
    handle; the run's loop reads the control state every round.
    """

    def __init__(self, client: Client, run_url: str) -> None:
        self.client = client
        self.run_url = run_url.rstrip("/")
        self.record = RunRecord(self.run_url)
        self.spec: RunSpec = spec_from_dict(self.record.spec())
        self.run_id = self.spec.run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, phase={self.status().get('phase')!r})"

    @classmethod
    def submit(cls, client: Client, spec: RunSpec) -> RunHandle:
        """Start ``spec``'s loop as a task on the cluster; it outlives this client."""
        RunRecord(spec.run_url).create(spec_to_dict(spec))
        handle = cls(client, spec.run_url)
        handle._launch()
        return handle

    def _launch(self) -> None:
        launch(self.client, spec_to_dict(self.spec))

    @property
    def future(self) -> Future:
        """The Dask future of the run's controller task (``controller-<run id>``)."""
        return Future(controller_key(self.run_id), self.client)

    def controller_alive(self) -> bool:
        """Whether the scheduler knows a live task running this run's loop."""
        key = controller_key(self.run_id)

        def state(dask_scheduler, key=key):
            ts = dask_scheduler.tasks.get(key)
            return None if ts is None else ts.state

        # a "released" task is known but will not run: that run needs a new controller
        return self.client.run_on_scheduler(state) in (
            "processing",
            "waiting",
            "queued",
            "no-worker",
        )

    def status(self) -> dict:
        """The run's ``status.json``: phase, round, version, roles, goodput, errors."""
        return self.record.status()

    def versions(self) -> list[int]:
        """The run's committed versions in the store."""
        return ParamStore(self.run_url).versions()

    def pause(self) -> None:
        """Ask the run to pause before its next round (:meth:`resume` continues it)."""
        self.record.set_control("paused")

    def stop(self) -> None:
        """Ask the run to stop before its next round; it commits its exact final version."""
        self.record.set_control("stopped")

    def resume(self) -> None:
        """Continue a paused run, or restart the loop of one that lost it (a scheduler
        restart, a stopped run)."""
        self.record.set_control("running")
        if not self.controller_alive():
            self._launch()

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Block until the run finishes, stops or fails; returns its final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status.get("phase") in DONE:
                if status["phase"] == "failed":
                    raise RunError(f"run {self.run_id} failed: {status.get('error')}")
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {self.run_id} still {status.get('phase')} after {timeout}s"
                )
            time.sleep(poll)

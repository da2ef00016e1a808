"""The durable record of a run, kept in the store beside its versions.

    <run_url>/run.json       the spec (written once, by whoever creates the run)
    <run_url>/control.json   the state clients ask for: running | paused | stopped
    <run_url>/status.json    what the run loop reports after every round
    <run_url>/history/       one small JSON per round (agents, drops, timing), for MTTR and audit

Everything a new client needs to attach to a run, and a new incarnation of its loop needs to
resume it, lives here and in the parameter store and checkpoints: nothing is kept only in memory.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from cluster_app.errors import RunError, SpecError

__all__ = ["CONTROL_STATES", "DONE", "RunRecord"]

CONTROL_STATES = ("running", "paused", "stopped")
DONE = ("finished", "stopped", "failed")  # phases after which the loop does not run again


class RunRecord:
    """Reads and writes one run's ``run.json``, ``control.json``, ``status.json``, ``history/``."""

    def __init__(self, run_url: str, storage_options: dict | None = None) -> None:
        self.url = run_url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def reader(cls, fs: AbstractFileSystem, root: str) -> RunRecord:
        """A record at ``root`` of ``fs`` for reading (it creates nothing): the keeper lists
        a store's runs this way."""
        record = cls.__new__(cls)
        record.fs, record.root = fs, root.rstrip("/")
        record.url = fs.unstrip_protocol(record.root)
        return record

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/{name}"))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _write(self, name: str, obj: dict) -> None:
        data = json.dumps(obj, indent=1, default=str).encode()
        path = f"{self.root}/{name}"
        self.fs.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):  # readers never see half a file
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # a single PUT is atomic on object storage

    def exists(self) -> bool:
        return self._read("run.json") is not None

    def should_run(self) -> bool:
        """Whether a loop should be running this run: clients ask for ``running`` and it has
        not finished or been stopped (a failed run is retried)."""
        return self.control() == "running" and self.status().get("phase") not in (
            "finished",
            "stopped",
        )

    def spec(self) -> dict:
        spec = self._read("run.json")
        if spec is None:
            raise RunError(f"no run at {self.url}")
        return spec

    def create(self, spec: dict) -> None:
        """Record the spec of a new run (idempotent for the same spec: fields that a later
        version of cluster_app added to specs do not make a recorded run a different one)."""
        existing = self._read("run.json")
        if existing is not None:
            if not _same(existing, json.loads(json.dumps(spec, default=str))):
                raise RunError(f"a different run already exists at {self.url}")
            return
        self._write("run.json", spec)
        self.set_control("running")

    def control(self) -> str:
        c = self._read("control.json")
        return c["state"] if c else "running"

    def set_control(self, state: str) -> None:
        if state not in CONTROL_STATES:
            raise SpecError(f"run state {state!r} is not one of {', '.join(CONTROL_STATES)}")
        self._write("control.json", {"state": state, "updated": time.time()})

    def record_round(self, round: int, record: dict[str, Any]) -> None:
        """Append one round to the run's history (``history/<round>.json``)."""
        self._write(f"history/{round:09d}.json", record)

    def history(self) -> list[dict[str, Any]]:
        """Every recorded round, in order (a round re-run after a crash appears once)."""
        try:
            names = sorted(self.fs.ls(f"{self.root}/history", detail=False))
        except FileNotFoundError:
            return []
        return [json.loads(self.fs.cat_file(n)) for n in names if n.endswith(".json")]

    def status(self) -> dict[str, Any]:
        return self._read("status.json") or {"phase": "pending"}

    def set_status(self, **fields: Any) -> None:
        self._write("status.json", {**fields, "updated": time.time()})


def _same(recorded: Any, new: Any) -> bool:
    """Whether ``new`` agrees with ``recorded`` on everything ``recorded`` holds."""
    if isinstance(recorded, dict) and isinstance(new, dict):
        return all(k in new and _same(v, new[k]) for k, v in recorded.items())
    return recorded == new

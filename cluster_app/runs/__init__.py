"""The run subsystem: a run's whole life, one job per file.

Map (plain data and pure functions first; only ``agents``, ``loop``, ``durable``, ``handle``,
``keeper`` and ``install`` talk to Dask; nothing here imports JAX)::

    spec.py      RunSpec (what a run is), RoundRecord (what a round did), TrainResult
    roles.py     assign_roles: active agents and hot standbys, sticky, with promotion (pure)
    goodput.py   Goodput (where the wall time went) and Clock (one incarnation's clocks)
    record.py    RunRecord: run.json, control.json, status.json, history/ in the store
    resume.py    resume: the three ways a run (re)starts, from the store and/or a checkpoint
    agents.py    RunAgents: submit a round's agent tasks, collect them, drop lost workers' shards
    progress.py  the progress bar over rounds
    loop.py      RunLoop: the round loop (roles, round, fold, evaluate, checkpoint, report)
    durable.py   the loop as a task on the cluster (controller_task, controller_key, launch)
    handle.py    RunHandle: a client's view of a durable run (status, pause, resume, stop, wait)
    keeper.py    RunKeeper: scheduler preload that relaunches durable runs after a restart
    install.py   install: the one function that puts our plugins on a cluster

``docs/architecture.md`` draws a round; ``docs/recovery.md`` what survives what.
"""

from __future__ import annotations

from cluster_app.runs.spec import RoundRecord, RunSpec, TrainResult

__all__ = ["RoundRecord", "RunSpec", "TrainResult"]

"""Continual runs on a LocalCluster with real worker processes: lifelong replay and EWC,
transfer with frozen leaves, incremental from another run's version, and a kill -9 mid-run."""

from __future__ import annotations

import json
import os

import dask
import numpy as np
import pytest
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec, ParamStore
from cluster_app.agent.continual_tasks import agent_consolidate
from cluster_app.errors import SpecError
from cluster_app.learning import ContinualSpec, consolidation, split_digits
from cluster_app.testing.chaos import controller_worker, kill_worker

pytestmark = pytest.mark.slow

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})
TRAIN = {"local_steps": 15, "checkpoint_every_rounds": None}


@pytest.fixture(scope="module")
def ac(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("continual-store"))
    with (
        dask.config.set({"cluster-app.cluster.dashboard-address": ":0"}),
        AgentCluster(n_workers=2, agent=SPEC, store_url=store, quiet=True) as ac,
    ):
        yield ac


def _manifest(run_url: str, k: int) -> dict:
    with open(os.path.join(run_url, "continual", f"consolidated-{k}.json")) as f:
        return json.load(f)


def test_a_lifelong_run_replays_only_earlier_tasks_and_forgets_less_than_fine_tuning(ac):
    tasks = split_digits()
    naive = ac.train(continual=ContinualSpec(tasks=tasks, rounds_per_task=3), **TRAIN)
    cs = ContinualSpec(tasks=tasks, rounds_per_task=3, replay_size=100, ewc_lambda=100.0)
    res = ac.train(continual=cs, **TRAIN)
    assert [r.task for r in res.rounds] == [i // 3 for i in range(15)]
    assert all(r.task_eval is not None and len(r.task_eval) == r.task + 1 for r in res.rounds)
    for k in range(1, 5):
        mem = consolidation.load(res.run_url, k)
        assert set(mem.replay.counts()) == set(range(k))  # samples of earlier tasks only
        assert set(np.unique(mem.replay.y)) <= set(range(2 * k))
        assert mem.meta["fisher"] == "exact" and sum(v.sum() for v in mem.fisher.values()) > 0
        # consolidated at the version the task ended with (the next task's base)
        assert mem.version == res.rounds[3 * k - 1].version
    ours, theirs = res.continual_report(), naive.continual_report()
    assert theirs["forgetting"] > 0.5  # class-incremental fine-tuning forgets (the pattern)
    assert ours["forgetting"] < theirs["forgetting"] / 2
    assert ours["average"] > theirs["average"] + 0.2
    assert len(ours["stability_gap"]) == 4
    # its commit in the registry carries the run's tasks, what protected them and its report
    rev = ac.versions.commit_run(res.run_id, branch="lifelong/replay-ewc")
    c = rev.lineage["continual"]
    assert c["mode"] == "lifelong" and c["tasks"] == [t.name for t in tasks]
    assert c["replay_size"] == 100 and c["ewc"] == {"lambda": 100.0, "fisher": "exact"}
    assert c["report"]["forgetting"] == pytest.approx(ours["forgetting"])
    assert rev.metrics["accuracy"] > 0.5  # the registry's own evaluation (every class)

    # a consolidation lost in a crash is rebuilt, at the version its manifest names, the same
    before = _manifest(res.run_url, 2)
    os.remove(os.path.join(res.run_url, "continual", "consolidated-2.json"))
    assert not consolidation.exists(res.run_url, 2)
    ac.client.submit(
        agent_consolidate, SPEC, res.run_url, before["version"], cs, 2, pure=False
    ).result()
    assert _manifest(res.run_url, 2)["sha256"] == before["sha256"]


def test_transfer_keeps_frozen_leaves_bit_identical_on_the_fleet(ac):
    first = ac.train(
        continual=ContinualSpec(tasks=split_digits()[:1], rounds_per_task=3), codec="int8", **TRAIN
    )
    cs = ContinualSpec(
        mode="transfer",
        prior_tasks=split_digits()[:1],
        tasks=split_digits()[1:2],
        rounds_per_task=4,
        freeze=("0",),
        rewarm_steps=30,
    )
    res = ac.train(continual=cs, init_from=f"run:{first.run_id}", codec="int8", **TRAIN)
    store = ParamStore(res.run_url)
    start, end = store.read(0)[0], store.read(res.version)[0]
    source = ParamStore(first.run_url).read(first.version)[0]
    assert all(np.array_equal(start[k], source[k]) for k in source)  # version 0 is run A's
    for k in ("0/w", "0/b"):
        assert np.array_equal(end[k], start[k])  # through int8 deltas and the outer step
    assert not np.array_equal(end["1/w"], start["1/w"])
    assert res.continual["start"][0]["name"] == "digits-0-1"  # the prior task, evaluated first
    assert res.rounds[0].learning_rate < SPEC.learning_rate  # re-warmed
    assert res.rounds[-1].learning_rate == pytest.approx(SPEC.learning_rate)
    assert [t["name"] for t in res.rounds[-1].task_eval] == ["digits-0-1", "digits-2-3"]


def test_incremental_starts_from_any_version_of_another_run(ac):
    first = ac.train(continual=ContinualSpec(tasks=split_digits()[:1], rounds_per_task=3), **TRAIN)
    cs = ContinualSpec(mode="incremental", tasks=split_digits()[1:2], rounds_per_task=2)
    res = ac.train(continual=cs, init_from=f"run:{first.run_id}@1", **TRAIN)
    v0 = ParamStore(res.run_url).read(0)
    want = ParamStore(first.run_url).read(1)[0]
    assert all(np.array_equal(v0[0][k], want[k]) for k in want)
    assert v0[1].meta["from_run"] == first.run_url and v0[1].meta["from_version"] == 1
    for bad, match in [
        ("run:nope", "no run 'nope'"),
        (f"run:{first.run_id}@99", "versions 0.."),
        (f"run:{first.run_id}@x", "number"),
    ]:
        with pytest.raises(SpecError, match=match):
            ac.train(continual=cs, init_from=bad, **TRAIN)


def test_a_durable_lifelong_run_survives_a_kill_with_its_replay_buffer(shared_cluster, store_url):
    cs = ContinualSpec(tasks=split_digits()[:3], rounds_per_task=4, replay_size=60)
    with (
        dask.config.set({"cluster-app.recovery.checkpoint-every-rounds": 1}),
        AgentCluster(
            shared_cluster.scheduler_address, agent=SPEC, store_url=store_url, quiet=True
        ) as ac,
    ):
        run = ac.submit(continual=cs, local_steps=60, standby=0)
        poll_for(lambda: consolidation.exists(run.run_url, 1), timeout=120, period=0.1)
        before = _manifest(run.run_url, 1)
        poll_for(lambda: run.status().get("round", -1) >= 5, timeout=120, period=0.1)
        where = controller_worker(ac.client, run.run_id)
        assert where is not None
        kill_worker(ac.client, where)  # kill -9 the controller's worker mid-run
        status = run.wait(timeout=300)
        assert status["phase"] == "finished" and status["version"] == 12
        assert status["goodput"]["recovery"] > 0  # it did restart
        assert _manifest(run.run_url, 1) == before  # the buffer survived as it was
        for k in (1, 2):
            mem = consolidation.load(run.run_url, k)  # checked against its SHA-256s
            assert set(mem.replay.counts()) == set(range(k))
        history = run.record.history()
        assert sorted({h["task"] for h in history}) == [0, 1, 2]
        assert len(history[-1]["task_eval"]) == 3

"""Training runs on a LocalCluster with real worker processes: elastic joins and departures."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec, ParamStore, RunError, SpecError
from cluster_app.runs.agents import live_workers

pytestmark = pytest.mark.slow

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})


@pytest.fixture
def ac(store_url):
    with AgentCluster(n_workers=2, agent=SPEC, store_url=store_url, quiet=True) as ac:
        yield ac


def test_training_learns_and_commits_every_round(ac):
    result = ac.train(rounds=4, local_steps=25)
    assert [r.version for r in result.rounds] == [1, 2, 3, 4]
    assert all(len(r.workers) == 2 for r in result.rounds)
    assert result.eval_end["loss"] < 0.5 * result.eval_end["baseline_loss"]
    assert result.eval_end["loss"] < result.eval_start["loss"]
    store = ParamStore(result.run_url)
    assert store.versions() == [0, 1, 2, 3, 4]
    assert store.record(4).meta["accepted"] == 2
    # the last round commits the coordinator's exact (fp32) model, not its lossy broadcast
    assert store.record(4).kind == "full" and store.record(4).meta["final"]


def test_a_run_stopped_early_commits_its_unsent_residual(ac, record_nbytes):
    # the target is met after round 0: the int4 version 1 is lossy, version 2 is the master
    result = ac.train(
        rounds=50,
        local_steps=25,
        codec="int4",
        eval_every=1,
        target_loss=10.0,
    )
    assert [r.version for r in result.rounds] == [1] and result.version == 2
    store = ParamStore(result.run_url)
    end = store.record(2)
    assert end.kind == "full" and end.parent == 1 and end.meta["final"]
    records = record_nbytes(result.run_url, 1) + record_nbytes(result.run_url, 2)
    assert result.rounds[0].commit_bytes == store.record(1).written + end.written + records


def test_agent_fields_override_the_clusters_agent(ac):
    # ``seed=`` changes the cluster's agent (an MLP on digits), it does not replace it with
    # the configured default agent
    result = ac.train(rounds=1, local_steps=2, seed=3, learning_rate=0.01)
    agent = json.loads((Path(result.run_url) / "run.json").read_text())["agent"]
    assert agent["model"] == "mlp" and agent["model_kwargs"] == {"hidden": 32, "n_layers": 1}
    assert agent["seed"] == 3 and agent["learning_rate"] == 0.01
    # another model is another kind of agent: that model's configured defaults
    assert ac._run_spec({"model": "codelm"}).agent.dataset == "code"


def test_a_wsd_run_cools_down_over_its_own_last_fifth(ac):
    # no decay_steps: the run's 5 rounds x 10 steps; flat 0.01 for 40 steps, then linear to 0
    result = ac.train(rounds=5, local_steps=10, lr_schedule="wsd", learning_rate=0.01)
    rates = [r.learning_rate for r in result.rounds]  # at each round's last step (t = 10r + 9)
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.01 * (1 - 9 / 10)], abs=1e-7)
    spec = json.loads((Path(result.run_url) / "run.json").read_text())["agent"]
    assert spec["lr_schedule"] == "wsd" and spec["decay_steps"] == 50
    constant = ac.train(rounds=1, local_steps=3, learning_rate=0.02)
    assert constant.rounds[0].learning_rate == pytest.approx(0.02)


def test_agents_reach_a_snapshot_through_its_delta(ac, record_nbytes):
    # K = 2 rounds: version 2 is a snapshot carrying its int8 delta; version 4, the last,
    # is the exact master (no delta)
    result = ac.train(rounds=4, local_steps=25, full_every=50)
    assert [r.kind for r in result.rounds] == ["delta", "full", "delta", "full"]
    snap = ParamStore(result.run_url).record(2)
    # both agents held version 1 and read version 2's delta, not the snapshot
    record = record_nbytes(result.run_url, 2)
    assert result.rounds[2].pull_bytes == 2 * (snap.delta["nbytes"] + record) < snap.nbytes
    assert result.rounds[1].commit_bytes == snap.nbytes + snap.delta["nbytes"] + record


def test_worker_added_mid_run_gets_work_next_round(ac):
    before = set(ac.workers)

    def grow(rec):
        if rec.round == 0:
            ac.scale(3)  # registered *and* running:
            poll_for(lambda: len(live_workers(ac.client)) >= 3, timeout=60, period=0.1)

    result = ac.train(rounds=3, local_steps=10, on_round=grow)
    new = set(ac.workers) - before
    assert len(new) == 1
    assert len(result.rounds[0].workers) == 2
    r1 = result.rounds[1]
    assert new <= set(r1.workers), (r1.workers, r1.dropped, r1.standby)  # trained next round
    assert len(result.rounds[1].workers) == 3


def test_worker_removed_mid_run_does_not_fail_the_run(ac):
    def shrink(rec):
        if rec.round == 0:
            ac.scale(1)

    result = ac.train(rounds=3, local_steps=10, on_round=shrink)
    assert len(result.rounds) == 3
    assert len(result.rounds[-1].workers) == 1


def test_worker_killed_mid_round_is_survived(ac):
    pids = ac.client.run(os.getpid)
    victim = sorted(pids)[1]
    timers = []

    def kill_during_next_round(rec):
        if rec.round == 0:  # kill -9 while round 1's tasks are running
            timers.append(threading.Timer(0.2, os.kill, (pids[victim], signal.SIGKILL)))
            timers[-1].start()

    # rounds long enough (~1 s of local steps each) that the kill lands inside round 1
    result = ac.train(rounds=3, local_steps=3000, on_round=kill_during_next_round)
    assert timers and not timers[0].is_alive()
    assert [r.version for r in result.rounds] == [1, 2, 3]
    # round 1 completed: the killed agent's shard was dropped (its round of work is the only
    # loss), the survivor's was folded, and the next rounds carry on
    r1 = result.rounds[1]
    assert len(r1.dropped) == 1 and len(r1.workers) == 1
    assert ParamStore(result.run_url).versions() == [0, 1, 2, 3]


def test_bad_training_arguments(ac):
    with pytest.raises(SpecError, match="train.local-steps = 0 is out of range"):
        ac.train(rounds=2, local_steps=0)
    with pytest.raises(SpecError, match="train.rounds = -1 is out of range"):
        ac.train(rounds=-1)
    with pytest.raises(SpecError, match=r"unknown training argument\(s\) \['epochs'\]"):
        ac.train(epochs=3)
    with pytest.raises(SpecError, match="agent.model = 'bert' is not valid"):
        ac.train(model="bert")
    with pytest.raises(RunError, match="call train"):
        AgentCluster.complete(ac, "x")  # no run yet on this cluster


def test_n_workers_validated():
    with pytest.raises(SpecError, match="n_workers=0 must be a positive integer"):
        AgentCluster(n_workers=0)

"""Perpetual training on a LocalCluster with real worker processes: crashes and resumption."""

from __future__ import annotations

import os
import threading
import time

import dask
import numpy as np
import pytest
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec, ParamStore, RunError
from cluster_app.testing.chaos import controller_worker, corrupt_latest_checkpoint, kill_worker

pytestmark = pytest.mark.slow

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})
TRAIN = {"local_steps": 20, "codec": "fp32"}


class Crash(Exception):
    """Stands in for the controller's process dying after a given round."""


@pytest.fixture
def ac(store_url):
    with (
        dask.config.set({"cluster-app.recovery.checkpoint-every-rounds": 2}),
        AgentCluster(n_workers=2, agent=SPEC, store_url=store_url, quiet=True) as ac,
    ):
        yield ac


def _crash_after(round_):
    def hook(rec):
        if rec.round == round_:
            raise Crash(f"controller died after round {round_}")

    return hook


def _final(result):
    return ParamStore(result.run_url).read(result.version)[0]


def _assert_close_to_reference(params, ref):
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("crash_round", [3, 4])  # right after a checkpoint / one round past it
def test_resumed_run_matches_a_failure_free_run(ac, crash_round):
    ref = ac.train(rounds=7, run_id="ref", **TRAIN)
    with pytest.raises(Crash):
        ac.train(rounds=7, run_id="crashy", on_round=_crash_after(crash_round), **TRAIN)
    resumed = ac.train(rounds=7, run_id="crashy", **TRAIN)
    assert resumed.resumed_from == crash_round + 1  # nothing committed is redone or lost
    assert ParamStore(resumed.run_url).versions() == list(range(8))
    _assert_close_to_reference(_final(resumed), _final(ref))
    assert resumed.goodput["recovery"] > 0


def test_corrupted_newest_checkpoint_falls_back_on_resume(ac):
    ref = ac.train(rounds=6, run_id="ref2", **TRAIN)
    with pytest.raises(Crash):
        ac.train(rounds=6, run_id="corrupt", on_round=_crash_after(3), **TRAIN)
    ckpt = os.path.join(ac.store_url, "corrupt", "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [1, 3]
    corrupt_latest_checkpoint(ckpt)
    resumed = ac.train(rounds=6, run_id="corrupt", **TRAIN)
    # restored round 1's checkpoint, caught up with the versions committed since, finished
    assert resumed.resumed_from == 4
    assert ParamStore(resumed.run_url).versions() == list(range(7))
    _assert_close_to_reference(_final(resumed), _final(ref))


def _kill_when_busy(client, victim, with_nanny):
    """kill -9 ``victim`` as soon as the scheduler shows it running an agent round."""
    poll_for(
        lambda: any(str(k).startswith("agent-round") for k in client.processing([victim])[victim]),
        timeout=60,
        period=0.02,
    )
    time.sleep(0.2)  # well inside its local steps
    kill_worker(client, victim, with_nanny)


def test_lost_node_is_replaced_by_a_hot_standby(store_url):
    with AgentCluster(n_workers=3, agent=SPEC, store_url=store_url, quiet=True) as ac:
        killer = []

        def kill_active_mid_round(rec):
            if rec.round == 1:
                killer.append(
                    threading.Thread(target=_kill_when_busy, args=(ac.client, rec.workers[0], True))
                )
                killer[-1].start()

        res = ac.train(
            rounds=5,
            standby=1,
            local_steps=4000,
            codec="fp32",
            on_round=kill_active_mid_round,
        )
        killer[0].join()
    victim = res.rounds[1].workers[0]
    standby = res.rounds[1].standby[0]
    hit = res.rounds[2]  # the round the kill landed in
    # the same round completed with every shard: the standby ran the lost one at once
    assert hit.dropped == [] and len(hit.workers) == 2 and victim not in hit.workers
    assert [(t["lost"], t["by"]) for t in hit.takeovers] == [(victim, standby)]
    assert standby in hit.workers  # the lost shard's delta came from the standby
    assert hit.takeovers[0]["started"] >= hit.takeovers[0]["detected"]
    assert all(not r.takeovers and not r.dropped for r in res.rounds if r.round != 2)
    for after in res.rounds[3:]:
        assert victim not in after.workers and standby in after.workers
        assert len(after.workers) == 2  # full strength, with the standby active
        assert after.standby == []  # the pool is empty: nothing restarts a lost node
    assert ParamStore(res.run_url).versions() == list(range(6))


def test_run_outlives_its_client_and_survives_controller_loss(shared_cluster, store_url):
    with dask.config.set({"cluster-app.recovery.checkpoint-every-rounds": 1}):
        with AgentCluster(
            shared_cluster.scheduler_address, agent=SPEC, store_url=store_url, quiet=True
        ) as first:
            handle = first.submit(rounds=12, local_steps=100, standby=1, codec="int8")
            run_id = handle.run_id
        # the submitting client is gone; a new one attaches by id
        with AgentCluster(
            shared_cluster.scheduler_address, agent=SPEC, store_url=store_url, quiet=True
        ) as second:
            run = second.attach(run_id)
            poll_for(lambda: run.status().get("round", -1) >= 2, timeout=120, period=0.2)
            where = controller_worker(second.client, run_id)
            assert where is not None
            kill_worker(second.client, where)  # kill -9 the controller's worker
            status = run.wait(timeout=240)
            assert status["phase"] == "finished" and status["version"] == 12
            assert run.versions() == list(range(13))  # no committed version lost
            assert status["goodput"]["recovery"] > 0  # the restart was accounted for
            for v in run.versions():  # and every one of them reads back
                ParamStore(run.run_url).read(v)


def test_pause_resume_and_stop(shared_cluster, store_url):
    with AgentCluster(
        shared_cluster.scheduler_address, agent=SPEC, store_url=store_url, quiet=True
    ) as ac:
        run = ac.submit(rounds=10**6, local_steps=10, codec="fp32")
        poll_for(lambda: run.status().get("round", -1) >= 1, timeout=60, period=0.1)
        run.pause()
        poll_for(lambda: run.status()["phase"] == "paused", timeout=30, period=0.1)
        v = run.status()["version"]
        time.sleep(1.0)
        assert run.status()["version"] == v  # no progress while paused
        run.resume()
        poll_for(lambda: run.status()["version"] > v, timeout=30, period=0.1)
        run.stop()
        assert run.wait(timeout=60)["phase"] == "stopped"


def test_attach_to_unknown_run(ac):
    with pytest.raises(RunError, match="no run at"):
        ac.attach("no-such-run")

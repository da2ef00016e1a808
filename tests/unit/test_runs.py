"""The run subsystem's parts without a cluster: roles, the resume paths, the run record, goodput
and the keeper's choice of runs (``cluster_app.runs``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cluster_app.errors import RunError, SpecError
from cluster_app.recovery.checkpoint import Checkpointer
from cluster_app.runs.agents import Collected, Takeover
from cluster_app.runs.goodput import Goodput
from cluster_app.runs.keeper import runs_to_resume
from cluster_app.runs.record import RunRecord
from cluster_app.runs.resume import resume
from cluster_app.runs.roles import Roles, after_takeover, assign_roles
from cluster_app.runs.spec import RoundRecord, TrainResult
from cluster_app.sync.codecs import get_codec
from cluster_app.sync.coordinator import Coordinator
from cluster_app.sync.push import Push
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore

# ---------------------------------------------------------------------- roles


def test_first_round_fills_the_pool_but_active_agents_outnumber_standbys():
    roles = assign_roles(Roles(), ["a", "b", "c", "d", "e"], standby_target=2)
    # the first worker trains, the next ones fill the pool, the rest train
    assert roles.active == ("a", "d", "e") and roles.standby == ("b", "c")
    # a 2-worker cluster keeps both agents learning; 3 workers allow one standby
    assert assign_roles(Roles(), ["a", "b"], 2) == Roles(active=("a", "b"))
    assert assign_roles(Roles(), ["a", "b", "c"], 2).standby == ("b",)


def test_roles_are_sticky_and_a_lost_agent_is_replaced_by_the_longest_waiting_standby():
    before = Roles(active=("a", "b", "c"), standby=("d", "e"))
    assert assign_roles(before, ["a", "b", "c", "d", "e"], 2) == before
    after = assign_roles(before, ["a", "c", "d", "e"], 2)
    assert after.active == ("a", "c", "d")  # b's shard goes to d, shards stay in place
    assert after.standby == ("e",) and after.lost == ("b",) and after.promoted == ("d",)


def test_a_joining_worker_refills_the_pool_then_trains():
    roles = assign_roles(Roles(active=("a", "c", "d"), standby=("e",)), list("acdef"), 2)
    assert roles.standby == ("e", "f") and roles.active == ("a", "c", "d")
    roles = assign_roles(roles, list("acdefg"), 2)
    assert roles.active == ("a", "c", "d", "g") and roles.standby == ("e", "f")


def test_with_no_standby_left_a_lost_agent_shrinks_the_fleet():
    roles = assign_roles(Roles(active=("a", "b"), standby=()), ["a"], 1)
    assert roles.active == ("a",) and roles.lost == ("b",) and roles.promoted == ()


def test_losing_every_active_agent_promotes_a_standby_even_below_target():
    roles = assign_roles(Roles(active=("a",), standby=("b",)), ["b"], 1)
    assert roles.active == ("b",) and roles.standby == ()


def test_a_standby_that_took_over_mid_round_is_active_in_the_lost_agents_place():
    before = Roles(active=("a", "b", "c"), standby=("d", "e"))
    after = after_takeover(before, {"b": "d"})
    assert after.active == ("a", "d", "c")  # d runs b's shard number from now on
    assert after.standby == ("e",) and after.lost == ("b",) and after.promoted == ("d",)
    # the next round keeps it so: nothing is lost again, no standby is promoted twice
    assert assign_roles(after, ["a", "c", "d", "e"], 2) == Roles(("a", "d", "c"), ("e",))
    assert after_takeover(before, {}) is before


def test_a_chain_of_takeovers_maps_the_lost_agent_to_its_last_replacement():
    got = Collected(
        results=[],
        takeovers=[Takeover(1, "b", "d", 0.0), Takeover(1, "d", "e", 1.0)],
        dropped=[],
    )
    assert got.replaced == {"b": "e"}  # d took over and was lost in turn; e ran the shard
    roles = after_takeover(Roles(("a", "b"), ("d", "e")), got.replaced)
    assert roles.active == ("a", "e") and roles.standby == ("d",)


def test_no_running_worker_is_an_error():
    with pytest.raises(RunError, match="no running workers"):
        assign_roles(Roles(active=("a",)), [], 0)


# ---------------------------------------------------------------------- resume paths

SHAPES = {"w": (12, 5), "b": (5,)}


def _params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


class Run:
    """A run's storage side: its store, a coordinator, a checkpointer; rounds fold synthetic
    pushes exactly as the loop does."""

    def __init__(self, root, local_steps: int = 10) -> None:
        self.url = str(root / "run")
        self.store = ParamStore(self.url)
        self.spec = SyncSpec(codec="int8", full_every=10**6, push_timeout=0.5)
        self.local_steps = local_steps
        self.ckpt_dir = str(root / "checkpoints")
        self.store.commit_full(_params(0), version=0)

    def coordinator(self) -> Coordinator:
        return Coordinator(ParamStore(self.url), self.spec)

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.ckpt_dir, keep=3)

    def rounds(self, c: Coordinator, first: int, n: int, ckpt: Checkpointer | None = None):
        for r in range(first, first + n):
            delta = {k: 0.01 * v for k, v in _params(100 + r).items()}
            enc = {k: get_codec("int8").encode(v)[0] for k, v in delta.items()}
            name = c.store.put_object(enc, codec="int8")
            push = Push(worker="w0", round=r, shard=0, base_version=c.version, delta=name)
            c.fold([push], self.local_steps, meta={"round": r})
            if ckpt is not None:
                state, meta = c.checkpoint()
                meta["round"] = r
                ckpt.save(r, state, meta)
                ckpt.manager.wait_until_finished()


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


def test_a_fresh_run_starts_from_version_0_of_the_store(run):
    c, ckpt = run.coordinator(), run.checkpointer()
    resumed = resume(c.store, c, ckpt, run.local_steps)
    ckpt.close()
    assert (resumed.first_round, resumed.path, resumed.restore_seconds) == (0, "store", 0.0)
    assert c.version == 0
    np.testing.assert_array_equal(c.master["w"], _params(0)["w"])


def test_without_a_checkpoint_the_newest_committed_version_is_the_start(run):
    c = run.coordinator()
    c.start(_params(0), 0)
    run.rounds(c, 0, 3)  # versions 1..3, rounds 0..2, no checkpoint
    fresh, ckpt = run.coordinator(), run.checkpointer()
    resumed = resume(fresh.store, fresh, ckpt, run.local_steps)
    ckpt.close()
    assert (resumed.first_round, resumed.path) == (3, "store")
    assert fresh.version == 3
    np.testing.assert_array_equal(fresh.published["w"], c.published["w"])


def test_the_store_path_builds_past_a_corrupted_newest_version(run, corrupt_chunk):
    c = run.coordinator()
    c.start(_params(0), 0)
    run.rounds(c, 0, 3)
    corrupt_chunk(run.url, run.store.record(3).object, "_packed")
    fresh, ckpt = run.coordinator(), run.checkpointer()
    resumed = resume(fresh.store, fresh, ckpt, run.local_steps)
    assert resumed.path == "store" and resumed.first_round == 3  # round 2's version is lost
    assert fresh.version == 2
    run.rounds(fresh, 3, 1)
    assert fresh.version == 4 and run.store.record(4).parent == 2  # 3 is never overwritten
    ckpt.close()


def test_a_checkpoint_with_nothing_newer_restores_the_exact_state(run):
    c, ckpt = run.coordinator(), run.checkpointer()
    c.start(_params(0), 0)
    run.rounds(c, 0, 3, ckpt)
    ckpt.close()
    fresh, ckpt = run.coordinator(), run.checkpointer()
    resumed = resume(fresh.store, fresh, ckpt, run.local_steps)
    ckpt.close()
    assert (resumed.first_round, resumed.path) == (3, "checkpoint")
    assert resumed.restore_seconds > 0
    assert fresh.version == 3 and fresh.steps_since_full == c.steps_since_full
    # the exact master, not its lossy broadcast: only a checkpoint can give that back
    np.testing.assert_array_equal(fresh.master["w"], c.master["w"])
    assert not np.array_equal(fresh.master["w"], fresh.published["w"])


def test_a_checkpoint_catches_up_with_versions_committed_after_it(run):
    c, ckpt = run.coordinator(), run.checkpointer()
    c.start(_params(0), 0)
    run.rounds(c, 0, 2, ckpt)  # checkpoints of rounds 0 and 1 (version 2)
    run.rounds(c, 2, 2)  # versions 3 and 4 committed, then the loop died
    ckpt.close()
    fresh, ckpt = run.coordinator(), run.checkpointer()
    resumed = resume(fresh.store, fresh, ckpt, run.local_steps)
    ckpt.close()
    assert (resumed.first_round, resumed.path) == (4, "checkpoint+store")
    assert fresh.version == 4
    assert fresh.steps_since_full == c.steps_since_full  # the two rounds caught up count
    np.testing.assert_array_equal(fresh.published["w"], c.published["w"])


def test_a_checkpoint_that_disagrees_with_the_store_is_not_used(run, tmp_path):
    c, ckpt = run.coordinator(), run.checkpointer()
    c.start(_params(0), 0)
    run.rounds(c, 0, 2, ckpt)
    ckpt.close()
    other = Run(tmp_path / "other")  # another run's store: same versions, other parameters
    other.store.commit_full(_params(7), version=1, parent=0)
    other.store.commit_full(_params(8), version=2, parent=1)
    fresh, ckpt = other.coordinator(), run.checkpointer()
    resumed = resume(fresh.store, fresh, ckpt, run.local_steps)
    ckpt.close()
    assert resumed.path == "store" and fresh.version == 2
    np.testing.assert_array_equal(fresh.master["w"], _params(8)["w"])


# ---------------------------------------------------------------------- the run record


def test_the_record_keeps_spec_control_status_and_history(tmp_path):
    record = RunRecord(str(tmp_path / "r1"))
    assert not record.exists() and record.status() == {"phase": "pending"}
    record.create({"run_id": "r1", "rounds": 3})
    record.create({"run_id": "r1", "rounds": 3})  # idempotent for the same spec
    with pytest.raises(RunError, match="a different run already exists"):
        record.create({"run_id": "r1", "rounds": 4})
    assert record.spec() == {"run_id": "r1", "rounds": 3} and record.control() == "running"
    # a field a later version adds to specs does not make it another run
    record.create({"run_id": "r1", "rounds": 3, "takeover_timeout": 300.0})
    record.set_control("paused")
    assert RunRecord(record.url).control() == "paused"  # another client sees it
    with pytest.raises(SpecError, match="'sleeping' is not one of running, paused, stopped"):
        record.set_control("sleeping")
    record.set_status(phase="running", round=1)
    status = RunRecord(record.url).status()
    assert status["phase"] == "running" and status["updated"] <= time.time()
    for r in (1, 0, 1):  # a round re-run after a crash is recorded once
        record.record_round(r, {"round": r})
    assert [h["round"] for h in record.history()] == [0, 1]
    with pytest.raises(RunError, match="no run at"):
        RunRecord(str(tmp_path / "nothing")).spec()


def test_status_writes_are_atomic_on_a_local_store(tmp_path):
    record = RunRecord(str(tmp_path / "r"))
    record.set_status(phase="running")
    assert not list((tmp_path / "r").glob("*.tmp"))  # written aside, then renamed into place


# ---------------------------------------------------------------------- goodput


def test_goodput_resumes_with_the_downtime_since_the_last_report():
    status = {
        "phase": "running",
        "updated": 1000.0,
        "goodput": {**Goodput(wall=50, productive=40).as_dict()},
    }
    g = Goodput.resumed(status, now=1010.0)
    assert (g.wall, g.productive, g.recovery) == (60.0, 40.0, 10.0)
    ended = Goodput.resumed({**status, "phase": "finished"}, now=1010.0)
    assert ended.wall == 50.0  # a finished run was not down
    assert Goodput.resumed({"phase": "pending"}) == Goodput()
    g.round(seconds=4.0, kept=0.75)
    assert (g.productive, g.recovery) == (43.0, 11.0)


# ---------------------------------------------------------------------- the keeper's choice


def _run_dir(store, run_id, control=None, phase=None, spec=True):
    record = RunRecord(str(store / run_id))
    if spec:
        record.create({"run_id": run_id})
    if control is not None:
        record.set_control(control)
    if phase is not None:
        record.set_status(phase=phase)


def test_the_keeper_resumes_runs_that_should_be_running(tmp_path):
    store = tmp_path / "store"
    _run_dir(store, "new")  # created, its loop never reported: resume
    _run_dir(store, "running", phase="running")
    _run_dir(store, "failed", phase="failed")  # a failed loop is retried
    _run_dir(store, "finished", phase="finished")
    _run_dir(store, "stopped", control="stopped", phase="stopped")
    _run_dir(store, "stopping", control="stopped", phase="running")  # asked to stop
    _run_dir(store, "paused", control="paused", phase="paused")
    _run_dir(store, "no-spec", spec=False, phase="running")  # not a run
    (store / "damaged").mkdir()
    (store / "damaged" / "run.json").write_text("{not json")
    (store / "stray-file").write_text("x")
    got = sorted(spec["run_id"] for spec in runs_to_resume(str(store)))
    assert got == ["failed", "new", "running"]
    assert runs_to_resume(str(tmp_path / "no-store")) == []
    assert json.loads((store / "new" / "run.json").read_text()) == {"run_id": "new"}


# ---------------------------------------------------------------------- the summary


def _result(eval_start, eval_end):
    r = RoundRecord(0, 1, "delta", ["a"], loss=0.5, loss_first=2.0, steps=10, seconds=1.0)
    return TrainResult("run-x", "store/run-x", 1, [r], eval_start, eval_end, 2.0, 1.0)


def test_the_summary_gives_a_classifiers_held_out_accuracy_beside_its_loss():
    start = {"loss": 2.3, "accuracy": 0.1, "baseline_loss": 2.3}
    summary = _result(start, {"loss": 0.1, "accuracy": 0.97, "baseline_loss": 2.3}).summary()
    assert summary["heldout_loss_end"] == 0.1
    assert summary["heldout_accuracy_start"] == 0.1 and summary["heldout_accuracy_end"] == 0.97
    # the code model's evaluation has no accuracy: its summary names none
    code = _result({"loss": 5.0}, {"loss": 2.5, "baseline_loss": 3.3}).summary()
    assert not any(k.startswith("heldout_accuracy") for k in code)
    assert code["heldout_loss_end"] == 2.5 and code["baseline_loss"] == 3.3

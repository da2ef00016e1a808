from __future__ import annotations

import os

import numpy as np
import pytest

from cluster_app.errors import RunError, SpecError
from cluster_app.recovery.checkpoint import Checkpointer
from cluster_app.recovery.policy import CheckpointPolicy, young_daly_interval
from cluster_app.runs.record import RunRecord
from cluster_app.testing.chaos import corrupt_latest_checkpoint


def test_policy_rounds_and_time():
    p = CheckpointPolicy(every_rounds=3, every_seconds=None)
    assert [p.should_save(r, 0.0) for r in range(4)] == [False, False, True, True]
    p.saved(2, 0.0)
    assert not p.should_save(3, 0.0) and p.should_save(5, 0.0)
    t = CheckpointPolicy(every_rounds=None, every_seconds=10.0)
    assert not t.should_save(0, 100.0) and not t.should_save(50, 109.0)
    assert t.should_save(51, 110.5)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="needs every_rounds and/or every_seconds"):
        CheckpointPolicy(None, None)
    with pytest.raises(ValueError, match="every_rounds=0"):
        CheckpointPolicy(0, None)


def test_young_daly():
    assert young_daly_interval(0.02, 6 * 3600) == pytest.approx(29.39, rel=1e-3)
    with pytest.raises(ValueError):
        young_daly_interval(0, 10)


def _state(v):
    return {"master": {"w": np.full((64, 8), v, np.float32), "b": np.full(8, v, np.float32)}}


def test_checkpoint_round_trip_keeps_last_n(tmp_path):
    c = Checkpointer(str(tmp_path / "ck"), keep=2)
    for step in range(4):
        c.save(step, _state(step), {"round": step})
    c.close()
    c = Checkpointer(str(tmp_path / "ck"), keep=2)
    assert c.steps() == [2, 3]
    r = c.restore(_state(0))
    assert r.step == 3 and r.meta == {"round": 3} and r.skipped == []
    np.testing.assert_array_equal(r.state["master"]["w"], _state(3)["master"]["w"])
    c.close()


def test_corrupted_latest_checkpoint_falls_back(tmp_path):
    c = Checkpointer(str(tmp_path / "ck"), keep=3)
    for step in range(3):
        c.save(step, _state(step), {"round": step})
    c.close()
    corrupt_latest_checkpoint(str(tmp_path / "ck"))
    c = Checkpointer(str(tmp_path / "ck"), keep=3)
    r = c.restore(_state(0))
    assert r.step == 1 and r.skipped == [2]
    np.testing.assert_array_equal(r.state["master"]["b"], _state(1)["master"]["b"])


def test_partial_checkpoint_is_ignored_and_validation_can_reject(tmp_path):
    d = tmp_path / "ck"
    c = Checkpointer(str(d), keep=3)
    c.save(0, _state(0), {"round": 0})
    c.save(1, _state(1), {"round": 1})
    c.close()
    # a crash mid-save leaves a tmp directory that Orbax never lists as a step
    os.makedirs(d / "2.orbax-checkpoint-tmp-123" / "state")
    c = Checkpointer(str(d), keep=3)
    assert c.steps() == [0, 1]
    r = c.restore(_state(0), validate=lambda s, m: "wrong store" if m["round"] == 1 else None)
    assert r.step == 0 and r.skipped == [1]


def test_no_checkpoint_and_none_usable(tmp_path):
    c = Checkpointer(str(tmp_path / "empty"))
    assert c.restore(_state(0)) is None
    c.save(0, _state(0), {"round": 0})
    c.close()
    c = Checkpointer(str(tmp_path / "empty"))
    assert c.restore(_state(0), validate=lambda s, m: "never") is None
    assert c.unusable == [0]  # the caller falls back to the store


def test_failed_save_is_recorded_not_silent(tmp_path):
    c = Checkpointer(str(tmp_path / "ck"))
    c.save(0, {"master": {"w": np.zeros(3, np.float32)}}, {"bad": object()})  # not JSON
    c.close()
    assert c.errors and "failed" in c.errors[0]


def test_run_state_round_trip(tmp_path):
    rs = RunRecord(str(tmp_path / "run"))
    assert not rs.exists() and rs.status() == {"phase": "pending"}
    rs.create({"run_id": "r1", "rounds": 3})
    rs.create({"run_id": "r1", "rounds": 3})  # idempotent
    with pytest.raises(RunError, match="a different run already exists"):
        rs.create({"run_id": "r1", "rounds": 4})
    assert rs.control() == "running"
    rs.set_control("paused")
    assert RunRecord(str(tmp_path / "run")).control() == "paused"
    with pytest.raises(SpecError, match="'sleeping' is not one of running, paused, stopped"):
        rs.set_control("sleeping")
    rs.set_status(phase="running", round=2)
    assert rs.status()["round"] == 2

"""``cluster-app runs ...`` and ``checkpoints ...`` over run records in a store (no cluster):
output, JSON, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cluster_app.agent.spec import AgentSpec
from cluster_app.cli import main
from cluster_app.recovery.checkpoint import Checkpointer
from cluster_app.runs.record import RunRecord
from cluster_app.runs.spec import RunSpec, spec_to_dict
from cluster_app.sync.store import ParamStore
from cluster_app.testing.chaos import corrupt_latest_checkpoint


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _params(v: int) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 4), float(v), np.float32), "b": np.full(4, -float(v), np.float32)}


def make_run(
    store: str,
    run_id: str,
    *,
    done: int = 3,
    rounds: int = 10,
    phase: str = "running",
    control: str | None = None,
    checkpoints: tuple[int, ...] = (),
    error: str | None = None,
) -> RunSpec:
    """A run as its loop leaves it: spec, ``done`` rounds of history and versions, a status,
    and Orbax checkpoints of the given rounds (round r holds version r + 1)."""
    spec = RunSpec.from_config(
        agent=AgentSpec.from_config(model="mlp"),
        store_url=store,
        rounds=rounds,
        local_steps=5,
        run_id=run_id,
    )
    record = RunRecord(spec.run_url)
    record.create(spec_to_dict(spec))
    params = ParamStore(spec.run_url)
    for v in range(done + 1):
        params.commit_full(
            _params(v), version=v, parent=v - 1 if v else None, meta={"round": v - 1}
        )
    for r in range(done):
        record.record_round(
            r,
            {
                "round": r,
                "version": r + 1,
                "ended": time.time(),
                "seconds": 0.5,
                "launched": 2,
                "agents": 1 if r == 1 else 2,  # round 1 lost one of its two agents
                "dropped": ["tcp://b:2"] if r == 1 else [],
                "takeovers": [],
                "standby": 0,
                "loss": 1.0 / (r + 1),
            },
        )
    record.set_status(
        phase=phase,
        round=done - 1,
        version=done,
        active=["tcp://a:1", "tcp://b:2"],
        standby=[],
        lost_workers=1,
        goodput={
            "goodput": 0.8,
            "wall": 10.0,
            "productive": 8.0,
            "recovery": 1.0,
            "checkpoint": 0.2,
        },
        **({"error": error} if error else {}),
    )
    if control:
        record.set_control(control)
    if checkpoints:
        ckpt = Checkpointer(spec.checkpoint_dir, keep=10)
        for r in checkpoints:
            p = _params(r + 1)
            state = {"master": p, "published": p, "outer": {"m": np.zeros(4, np.float32)}}
            ckpt.save(r, state, {"round": r, "version": r + 1})
        ckpt.close()
    return spec


@pytest.fixture
def store(tmp_path):
    url = str(tmp_path / "store")
    make_run(url, "run-a", done=3, phase="finished", checkpoints=(0, 1, 2))
    make_run(url, "run-b", done=2, phase="running")
    return url


def test_list_and_show(store):
    r = cli("runs", "list", "--store", store)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["run", "phase", "control"]
    assert lines[1].split()[:4] == ["run-a", "finished", "running", "3/10"]
    assert lines[2].split()[:4] == ["run-b", "running", "running", "2/10"]

    rows = json.loads(cli("runs", "list", "--store", store, "--json").output)
    assert [x["run_id"] for x in rows] == ["run-a", "run-b"]
    assert rows[0]["version"] == 3 and rows[0]["loss"] == pytest.approx(1 / 3)
    assert rows[0]["model"] == "mlp" and rows[0]["goodput"] == 0.8

    r = cli("runs", "show", "run-a", "--store", store)
    assert r.exit_code == 0, r.output
    assert "run run-a  finished (requested: running)" in r.output
    assert "goodput 80.0%" in r.output and "2 active, 0 standby, 1 lost" in r.output
    rounds = [line for line in r.output.splitlines() if line.startswith("round")]
    assert len(rounds) == 3
    assert "loss 0.5000" in rounds[1] and "agents 1/2" in rounds[1] and "goodput 50%" in rounds[1]
    assert "dropped 1" in rounds[1] and "goodput 100%" in rounds[2]

    shown = json.loads(cli("runs", "show", "run-a", "-n", "1", "--json", "--store", store).output)
    assert shown["run_id"] == "run-a" and shown["status"]["phase"] == "finished"
    assert shown["rounds_recorded"] == 3 and [h["round"] for h in shown["rounds"]] == [2]
    assert shown["rounds"][0]["kept"] == 1.0 and shown["spec"]["rounds"] == 10


def test_empty_store_lists_nothing(tmp_path):
    r = cli("runs", "list", "--store", str(tmp_path / "none"))
    assert r.exit_code == 0 and "no runs in" in r.output
    assert json.loads(cli("runs", "list", "--json", "--store", str(tmp_path)).output) == []


def test_unknown_and_malformed_run_ids(store):
    for args in (
        ("runs", "show", "nope"),
        ("runs", "attach", "nope"),
        ("runs", "pause", "nope"),
        ("runs", "resume", "nope"),
        ("runs", "stop", "nope"),
        ("checkpoints", "list", "nope"),
        ("checkpoints", "verify", "nope"),
    ):
        r = cli(*args, "--store", store)
        assert r.exit_code == 1, (args, r.output)
        assert f"error: no run 'nope' in the store {store}" in r.output
    r = cli("runs", "show", "../run-a", "--store", store)
    assert r.exit_code == 2 and "is not a run id" in r.output
    assert cli("runs", "show", "--store", store).exit_code == 2  # RUN is required
    assert cli("runs", "nope").exit_code == 2


def test_pause_resume_stop_through_the_record(store):
    record = RunRecord(f"{store}/run-b")
    r = cli("runs", "pause", "run-b", "--store", store)
    assert r.exit_code == 0 and record.control() == "paused"
    r = cli("runs", "pause", "run-b", "--store", store)
    assert r.exit_code == 0 and "paused already" in r.output
    r = cli("runs", "resume", "run-b", "--store", store)
    assert r.exit_code == 0 and record.control() == "running"
    r = cli("runs", "resume", "run-b", "--store", store)  # nothing to do without a scheduler
    assert r.exit_code == 0 and "was not paused" in r.output
    r = cli("runs", "stop", "run-b", "--store", store)
    assert r.exit_code == 0 and record.control() == "stopped"
    assert "stopped already" in cli("runs", "stop", "run-b", "--store", store).output
    # --wait with no loop to act on it: a clear timeout, exit 1
    record.set_control("running")
    r = cli("runs", "pause", "run-b", "--wait", "--timeout", "0.3", "--store", store)
    assert r.exit_code == 1 and "still running after 0.3s" in r.output


def test_refusals_on_ended_runs(store):
    for verb in ("pause", "stop", "resume"):
        r = cli("runs", verb, "run-a", "--store", store)  # finished
        assert r.exit_code == 3, (verb, r.output)
        assert r.output.startswith("refused: run run-a has finished")
    make_run(store, "run-c", phase="stopped", control="stopped")
    r = cli("runs", "pause", "run-c", "--store", store)
    assert r.exit_code == 3 and "has been stopped" in r.output
    # a stopped run's loop has ended: resuming it needs the cluster to relaunch it on
    r = cli("runs", "resume", "run-c", "--store", store)
    assert r.exit_code == 2 and "pass --scheduler" in r.output
    assert RunRecord(f"{store}/run-c").control() == "stopped"  # nothing written
    assert "stopped already" in cli("runs", "stop", "run-c", "--store", store).output


def test_attach_to_ended_and_lost_runs(store):
    r = cli("runs", "attach", "run-a", "--last", "2", "--store", store)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["1", "2"]  # the last 2 rounds
    assert lines[-1].startswith("run run-a finished: 3 rounds, version 3")
    make_run(store, "run-f", phase="failed", error="RunError('every agent was lost')")
    r = cli("runs", "attach", "run-f", "--store", store)
    assert r.exit_code == 1 and "failed: RunError('every agent was lost')" in r.output
    r = cli("runs", "attach", "run-b", "--timeout", "0.3", "--store", store)  # no loop
    assert r.exit_code == 1 and "still running after 0.3s" in r.output


def test_checkpoints_list_and_verify(store):
    r = cli("checkpoints", "list", "run-a", "--store", store)
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines()[1:-1]]
    assert [(x[0], x[1]) for x in rows] == [("0", "1"), ("1", "2"), ("2", "3")]
    assert r.output.splitlines()[-1].startswith("3 checkpoints in ")
    listed = json.loads(cli("checkpoints", "list", "run-a", "--json", "--store", store).output)
    assert [c["step"] for c in listed["checkpoints"]] == [0, 1, 2]
    assert all(c["bytes"] > 1000 and c["saved"] > 0 for c in listed["checkpoints"])

    r = cli("checkpoints", "verify", "run-a", "--store", store)
    assert r.exit_code == 0, r.output
    assert r.output.count(" ok") == 3 and "0 unusable; newest usable: step 2" in r.output

    corrupt_latest_checkpoint(listed["directory"])
    r = cli("checkpoints", "verify", "run-a", "--store", store)
    assert r.exit_code == 1, r.output
    assert "step      2  version      3  UNUSABLE: " in r.output
    assert "3 checkpoints, 1 unusable; newest usable: step 1" in r.output
    report = json.loads(cli("checkpoints", "verify", "run-a", "--json", "--store", store).output)
    assert report["unusable"] == [2] and report["resume_from"] == 1
    assert cli("checkpoints", "verify", "run-a", "--step", "1", "--store", store).exit_code == 0
    r = cli("checkpoints", "verify", "run-a", "--step", "7", "--store", store)
    assert r.exit_code == 2 and "no checkpoint at step(s) [7]" in r.output


def test_verify_rejects_a_checkpoint_the_store_disagrees_with(tmp_path):
    """Intact on disk but not the store's version it names: a resume would skip it."""
    url = str(tmp_path / "store")
    spec = make_run(url, "run-d", done=2, checkpoints=(0,))
    ckpt = Checkpointer(spec.checkpoint_dir, keep=10)
    wrong = _params(7)
    ckpt.save(
        1,
        {"master": wrong, "published": wrong, "outer": {"m": np.zeros(4)}},
        {"round": 1, "version": 2},
    )
    ckpt.close()
    r = cli("checkpoints", "verify", "run-d", "--store", url)
    assert r.exit_code == 1, r.output
    assert "published parameters differ from stored version 2" in r.output


def test_a_run_without_checkpoints(store):
    r = cli("checkpoints", "list", "run-b", "--store", store)
    assert r.exit_code == 0 and "has no checkpoints" in r.output
    r = cli("checkpoints", "verify", "run-b", "--store", store)
    assert r.exit_code == 0 and "has no checkpoints" in r.output


def test_the_cli_knows_the_phases_a_run_ends_in():
    from cluster_app.cli import _runs
    from cluster_app.runs import record

    assert _runs.DONE == record.DONE  # copied so that `cluster-app --help` imports no fsspec

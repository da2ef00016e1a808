"""``cluster-app versions ...`` as scripts use it: output, JSON, and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from cluster_app import AgentSpec, Versions
from cluster_app.agent.agent import Agent
from cluster_app.cli import main

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 16, "n_layers": 1})
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def store(tmp_path):
    """A registry whose dev holds an untrained and a better (nudged towards a fit) model."""
    url = str(tmp_path / "store")
    v = Versions(url)
    p0 = Agent(SPEC).init_params()
    config = {"agent": asdict(SPEC)}
    v.commit(p0, branch="dev", message="untrained", config=config)
    v.promote("dev", "prod")
    # a few real SGD steps make a better model
    agent = Agent(SPEC)
    agent.load(p0, 0)
    delta, _ = agent.train(0, 0, 1, 60)
    v.commit({k: p0[k] + delta[k] for k in p0}, branch="dev", message="trained", config=config)
    return url


def cli(*args):
    return CliRunner().invoke(main, ["versions", *args], catch_exceptions=False)


def test_log_refs_reflog_show_and_diff(store):
    r = cli("log", "dev", "--store", store)
    assert r.exit_code == 0 and r.output.splitlines()[0].split()[2] == "trained"
    refs = json.loads(cli("refs", "--json", "--store", store).output)
    assert set(refs["branches"]) == {"dev", "prod"}
    assert "promote" in cli("reflog", "prod", "--store", store).output
    shown = json.loads(cli("show", "dev", "--store", store).output)
    assert shown["message"] == "trained" and len(shown["parents"]) == 1
    diff = json.loads(cli("diff", "prod", "dev", "--store", store).output)
    assert diff["eval"]["heldout_loss"][2] < 0 and diff["layers"]["0/w"]["l2"] > 0


def test_exit_codes(store):
    assert cli("promote", "dev", "prod", "--store", store).exit_code == 0  # better: passes
    r = cli("promote", "dev~1", "prod", "--store", store)
    assert r.exit_code == 3 and "refused" in r.output  # worse: the gate refuses
    assert cli("branch", "bad..name", "prod", "--store", store).exit_code == 2
    r = cli("branch", "prod", "dev", "--store", store)
    assert r.exit_code == 4 and "exists" in r.output
    r = cli("show", "nope", "--store", store)
    assert r.exit_code == 1 and "no branch, tag or commit named 'nope'" in r.output
    r = cli("promote", "dev~1", "prod", "--force", "-m", "override", "--store", store)
    assert r.exit_code == 0 and "FORCED past heldout_loss" in r.output
    assert "FORCED" in cli("reflog", "prod", "--store", store).output.splitlines()[-1]
    r = cli("rollback", "prod", "--store", store)
    assert r.exit_code == 0 and Versions(store).resolve("prod") == Versions(store).resolve("dev")
    r = cli("rollback", "prod", "--to", "nope", "--store", store)
    assert r.exit_code == 1 and "nope" in r.output


def test_gc_dry_run_lists_and_deletes_nothing(store):
    cli("rollback", "prod", "--store", store)  # prod and dev both hold something
    r = cli(
        "gc",
        "--dry-run",
        "--json",
        "--retention-days",
        "0",
        "--grace-seconds",
        "0",
        "--store",
        store,
    )
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["dry_run"] and report["deleted_params"] == 0
    assert report["kept_params"] == 2


@pytest.mark.slow
def test_the_console_script_and_dask_cli(store):
    out = subprocess.run(
        [os.path.join(BIN, "dask"), "cluster-app", "versions", "refs", "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "prod" in out.stdout
    script = os.path.join(BIN, "cluster-app")
    for rev, code in (("dev", 0), ("dev~1", 3)):
        out = subprocess.run(
            [script, "versions", "promote", rev, "--store", store],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == code, out.stderr
    assert out.returncode == 3 and out.stderr.startswith("refused: promotion of dev~1")

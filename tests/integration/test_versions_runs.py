"""The registry with real models, real runs and a real S3 server.

- the one eval spec on the real digits model and code model (the gate reads it);
- a run starts from a registry ref on a LocalCluster, and its commit records its lineage;
- a run of the wrong model cannot start from a commit;
- concurrent ref updates from several processes on SeaweedFS's S3, with no lost update;
- the jobs/ example runs the whole flow: dev, gated promotion, feature branch, merge, rollback.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import time

import numpy as np
import pytest

from cluster_app import AgentCluster, AgentSpec, ParamStore, SpecError, Versions
from cluster_app.agent.agent import Agent
from cluster_app.agent.evaluate import evaluate_params
from cluster_app.sync.tree import digest
from cluster_app.testing.contention import contend
from cluster_app.versions.gate import EvalSpec
from cluster_app.versions.registry import Registry

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32, "n_layers": 1})


def test_the_eval_spec_on_the_real_models():
    spec = EvalSpec(batches=2, batch_size=16, completion_chars=4)
    digits = evaluate_params(SPEC, Agent(SPEC).init_params(), spec)
    assert set(digits) == {"heldout_loss", "accuracy"} and 0 <= digits["accuracy"] <= 1
    code = AgentSpec.from_config(model="codelm", model_kwargs={"d_model": 16, "n_layers": 1})
    fresh = Agent(code).init_params()
    m = evaluate_params(code, fresh, spec)
    assert set(m) == {"heldout_loss", "char_accuracy", "exact_match"}
    assert m["heldout_loss"] == pytest.approx(np.log(code_vocab(code)), rel=0.1)  # untrained
    assert m["exact_match"] <= m["char_accuracy"] <= 1
    assert evaluate_params(code, fresh, spec) == m  # the same batches every time: paired
    with pytest.raises(SpecError, match="exceeds the model's context"):
        evaluate_params(code, fresh, EvalSpec(batches=1, batch_size=4, completion_chars=1000))


def code_vocab(spec: AgentSpec) -> int:
    from cluster_app.agent.data import VOCAB

    return len(VOCAB)


@pytest.mark.slow
def test_a_run_starts_from_a_ref_and_its_commit_records_its_lineage(store_url):
    with AgentCluster(n_workers=2, agent=SPEC, store_url=store_url, quiet=True) as ac:
        v = ac.versions
        first = ac.train(rounds=2, local_steps=20, progress=False)
        c1 = v.commit_run(first.run_id, branch="dev", message="first")
        assert c1.lineage["run_id"] == first.run_id and c1.lineage["version"] == first.version
        assert c1.lineage["corpus"]["dataset"] == "digits" and c1.lineage["shards"] == 2
        assert c1.config["agent"]["model"] == "mlp" and "accuracy" in c1.metrics
        assert c1.eval["key"] == EvalSpec.from_config().key()
        params = v.params("dev")
        assert digest(params) == ParamStore(first.run_url).record(first.version).digest

        second = ac.train(rounds=1, local_steps=20, init_from="dev", progress=False)
        store = ParamStore(second.run_url)
        v0, rec0 = store.read(0)
        assert digest(v0) == c1.params and rec0.meta["from_commit"] == c1.id
        c2 = v.commit_run(second.run_id, branch="dev", message="second")
        assert c2.parents == (c1.id,) and c2.lineage["from_commit"] == c1.id

        # another model cannot start from it: a clear error, nothing committed
        code = AgentSpec.from_config(model="codelm", model_kwargs={"d_model": 16, "n_layers": 1})
        with pytest.raises(SpecError, match="does not fit this run's codelm model"):
            ac.train(agent=code, rounds=1, local_steps=5, init_from="dev", progress=False)
        # the registry's version survives its run's store being deleted
        import shutil

        shutil.rmtree(first.run_url)
        np.testing.assert_array_equal(v.params(c1.id)["0/w"], params["0/w"])


@pytest.mark.slow
def test_concurrent_ref_updates_from_processes_on_s3(s3):
    url = f"s3://cluster-app-test/reg-{os.getpid()}-{time.monotonic_ns()}"
    log, landed, _ = contend(url, s3, workers=3, n=6)
    assert len(log) == 3 * 6 + 1
    assert sorted(e.target for e in log[1:]) == sorted(landed)
    assert all(b.previous == a.target for a, b in itertools.pairwise(log))
    reg = Registry(url, s3)
    # and a commit with parameters round-trips through S3, checked against its digest
    p = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    c = reg.commit(p, branch="dev", message="on s3")
    np.testing.assert_array_equal(Versions(url, s3).params("dev")["w"], p["w"])
    assert Versions(url, s3).get("dev") == c


@pytest.mark.slow
def test_the_versions_flow_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, "jobs", "versions_flow.py")
    mod_spec = importlib.util.spec_from_file_location("versions_flow", path)
    assert mod_spec and mod_spec.loader
    job = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(job)
    store = str(tmp_path / "store")
    out = job.main(workers=2, store=store, model="mlp", rounds=3, local_steps=20)
    actions = [e["action"] for e in out["prod_reflog"]]
    assert actions[:2] == ["promote", "promote"] and actions[-1] == "rollback"
    assert out["merged"] == ("fast-forward" in actions or "merge" in actions)
    v = Versions(store)
    assert v.resolve("prod") == out["prod_reflog"][-1]["target"]
    assert [c["message"] for c in out["log_dev"]] == ["3 rounds on dev", "initial parameters"]
    assert out["log_dev"][0]["heldout_loss"] < out["log_dev"][1]["heldout_loss"]
    assert "layers" in out["diff_feature_vs_prod"]

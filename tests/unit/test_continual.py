"""Continual learning's parts, in one process: the Fisher, EWC's penalty, frozen leaves, the
replay reservoir, consolidations in the store, the literature's metrics, the spec."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr

from cluster_app.agent.agent import Agent
from cluster_app.agent.models import make_mlp
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import CorruptData, SpecError, StoreError
from cluster_app.learning import (
    ContinualSpec,
    ReplayBuffer,
    Task,
    consolidation,
    joint,
    report,
    split_digits,
)
from cluster_app.learning.ewc import fisher, penalty
from cluster_app.learning.memory import Consolidation
from cluster_app.runs.spec import RunSpec, spec_from_dict, spec_to_dict
from cluster_app.sync.tree import flatten

SPEC = AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 16, "n_layers": 1})


# ---------------------------------------------------------------------- the Fisher
def _brute_force_fisher(model, params, x, y=None, mask=None):
    """One jax.grad per example and class, summed in Python: the definition, slowly."""
    total = jax.tree.map(jnp.zeros_like, params)
    for i in range(len(x)):

        def logp(p, c, i=i):
            logits = model.apply(p, x[i : i + 1])[0]
            if mask is not None:
                logits = jnp.where(mask[i], logits, -1e9)
            return jax.nn.log_softmax(logits)[c]

        probs = np.exp(
            np.asarray(
                jax.nn.log_softmax(
                    model.apply(params, x[i : i + 1])[0]
                    if mask is None
                    else jnp.where(mask[i], model.apply(params, x[i : i + 1])[0], -1e9)
                )
            )
        )
        classes = range(probs.shape[0]) if y is None else [int(y[i])]
        for c in classes:
            g = jax.grad(logp)(params, c)
            w = 1.0 if y is not None else probs[c]
            total = jax.tree.map(lambda t, gg, w=w: t + w * gg**2, total, g)
    return jax.tree.map(lambda t: t / len(x), total)


@pytest.mark.parametrize("masked", [False, True])
def test_the_exact_fisher_matches_a_brute_force_per_example_computation(masked):
    model = make_mlp(n_in=5, n_classes=4, hidden=6, n_layers=1)
    params = model.init(jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=7).astype(np.int32)
    mask = np.tile(np.array([True, True, False, True]), (7, 1)) if masked else None
    want = flatten(_brute_force_fisher(model, params, x, mask=mask))
    got = flatten(fisher(model, params, x, y, mask, variant="exact", chunk=3))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-7)
    assert sum(float(v.sum()) for v in got.values()) > 0
    emp_want = flatten(_brute_force_fisher(model, params, x, y=y, mask=mask))
    emp = flatten(fisher(model, params, x, y, mask, variant="empirical", chunk=4))
    for k in emp_want:
        np.testing.assert_allclose(emp[k], emp_want[k], rtol=2e-4, atol=1e-7)
    # the two variants are different quantities, not one computed twice
    assert any(not np.allclose(got[k], emp[k]) for k in got)


def test_the_exact_fisher_is_refused_for_the_code_model():
    from cluster_app.agent.models import make_codelm

    model = make_codelm(vocab=10, context=4, d_model=8, n_layers=1, n_heads=2)
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(SpecError, match="empirical"):
        fisher(model, params, np.zeros((2, 4), np.int32), np.zeros((2, 4), np.int32))


def test_the_ewc_penalty_is_zero_at_the_anchor_and_positive_away_from_it():
    model = make_mlp(n_in=5, n_classes=3, hidden=4, n_layers=1)
    anchor = model.init(jax.random.PRNGKey(0))
    f = fisher(model, anchor, np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32))
    assert float(penalty(anchor, f, anchor)) == 0.0
    moved = jax.tree.map(lambda a: a + 0.1, anchor)
    assert float(penalty(moved, f, anchor)) > 0
    # weighted by the Fisher: a leaf it deems unimportant (zero) costs nothing to move
    zero = jax.tree.map(jnp.zeros_like, f)
    assert float(penalty(moved, zero, anchor)) == 0.0


# ---------------------------------------------------------------------- an agent's rounds
def _agent() -> Agent:
    agent = Agent(SPEC)
    agent.load(agent.init_params(), 0)
    agent.run = "memory://test-run"
    return agent


def _plan(cs: ContinualSpec, r: int = 0):
    return cs.plan(r)


def test_frozen_leaves_stay_bit_identical_and_down_weighted_ones_move_less():
    tasks = split_digits()
    free = _agent().train(0, 0, 1, 10, _plan(ContinualSpec(tasks=tasks)))[0]
    cs = ContinualSpec(tasks=tasks, freeze=("0",), down_weight=("1/w",), down_weight_scale=0.1)
    agent = _agent()
    before = agent.params()
    delta, _ = agent.train(0, 0, 1, 10, _plan(cs))
    after = agent.params()
    for k in ("0/w", "0/b"):
        assert np.array_equal(after[k], before[k])  # bit-identical, not merely close
        assert not delta[k].any()
    assert np.abs(delta["1/b"]).sum() > 0
    # a tenth of the step: the same first update, scaled (Adam normalises, so the size drops)
    assert np.abs(delta["1/w"]).mean() < 0.5 * np.abs(free["1/w"]).mean()


def test_unfreezing_changes_the_partition_and_trains_every_leaf():
    cs = ContinualSpec(tasks=split_digits(), freeze=("0",), unfreeze_after=1, rounds_per_task=2)
    agent = _agent()
    agent.train(0, 0, 1, 5, cs.plan(0))
    delta, _ = agent.train(1, 0, 1, 5, cs.plan(1))
    assert cs.plan(1).freeze == ()
    assert np.abs(delta["0/w"]).sum() > 0


def test_the_learning_rate_is_rewarmed_after_a_switch():
    cs = ContinualSpec(tasks=split_digits(), rewarm_steps=40, rounds_per_task=2)
    agent = _agent()
    _, first = agent.train(0, 0, 1, 10, cs.plan(0))
    _, second = agent.train(1, 0, 1, 10, cs.plan(1))
    _, switched = agent.train(2, 0, 1, 10, cs.plan(2))  # task 1's first round
    lr = SPEC.learning_rate
    assert first["learning_rate"] == pytest.approx(lr * 10 / 40)
    assert second["learning_rate"] == pytest.approx(lr * 20 / 40)
    assert switched["learning_rate"] == pytest.approx(lr * 10 / 40)


def test_replay_draws_from_the_consolidated_tasks_and_ewc_reads_the_anchor():
    cs = ContinualSpec(tasks=split_digits(), replay_size=50, ewc_lambda=10.0, fisher_samples=32)
    agent = _agent()
    memory = agent.continual.consolidate(cs, 2, 0, None)
    assert set(memory.replay.counts()) == {0, 1}  # only the finished tasks
    assert set(np.unique(memory.replay.y)) <= {0, 1, 2, 3}  # their classes, nothing else
    assert memory.meta["fisher"] == "exact"
    assert sum(float(v.sum()) for v in memory.fisher.values()) > 0
    assert all(np.array_equal(memory.anchor[k], v) for k, v in agent.params().items())
    # the next round needs it and says so; with it, it trains
    with pytest.raises(SpecError, match="consolidation"):
        agent.train(cs.rounds_per_task * 2, 0, 1, 5, cs.plan(cs.rounds_per_task * 2))
    plan = cs.plan(cs.rounds_per_task * 2)
    assert plan.consolidated == 2
    _, m = agent.train(cs.rounds_per_task * 2, 0, 1, 5, plan, memory)
    assert np.isfinite(m["loss_last"])
    # a second consolidation extends the first: earlier tasks keep a share of the buffer
    agent.load(agent.params(), 1)
    later = agent.continual.consolidate(cs, 3, 1, memory)
    assert set(later.replay.counts()) == {0, 1, 2}
    assert (
        later.replay.seen == memory.replay.seen + agent.continual.dataset(cs.tasks[2].data).examples
    )


# ---------------------------------------------------------------------- the reservoir
def test_the_reservoir_is_uniform_over_tasks_and_deterministic():
    def fill(seed):
        buf = ReplayBuffer(200)
        for t in range(4):
            x = np.full((300, 2), t, np.float32)
            buf.add(x, np.full(300, t, np.int32), t, np.random.default_rng([seed, t]))
        return buf

    buf = fill(0)
    assert len(buf) == 200 and buf.seen == 1200
    counts = buf.counts()
    assert set(counts) == {0, 1, 2, 3}
    assert all(25 <= c <= 75 for c in counts.values()), counts  # ~50 each, not the last task's
    assert np.array_equal(buf.x[:, 0], buf.task)  # every example kept with its own task
    again = fill(0)
    assert np.array_equal(again.x, buf.x) and np.array_equal(again.task, buf.task)
    x, _, t = buf.sample(64, np.random.default_rng(1))
    assert x.shape == (64, 2) and set(np.unique(t)) <= {0, 1, 2, 3}


def test_the_reservoir_refuses_bad_input():
    with pytest.raises(SpecError, match="capacity"):
        ReplayBuffer(0)
    buf = ReplayBuffer(5)
    with pytest.raises(SpecError, match="empty"):
        buf.sample(1, np.random.default_rng(0))
    with pytest.raises(SpecError, match="labels"):
        buf.add(np.zeros((3, 2)), np.zeros(2), 0, np.random.default_rng(0))


# ---------------------------------------------------------------------- consolidations
def _memory() -> Consolidation:
    buf = ReplayBuffer(4)
    buf.add(
        np.arange(12, dtype=np.float32).reshape(6, 2),
        np.arange(6, dtype=np.int32),
        0,
        np.random.default_rng(0),
    )
    f = {"0/w": np.full((2, 3), 0.5, np.float32), "0/b": np.ones(3, np.float32)}
    return Consolidation(1, 7, buf, f, {k: v * 2 for k, v in f.items()}, {"fisher": "exact"})


def test_a_consolidation_round_trips_and_plain_zarr_reads_it(tmp_path):
    url = str(tmp_path / "run")
    assert not consolidation.exists(url, 1)
    c = _memory()
    consolidation.save(url, c)
    assert consolidation.exists(url, 1)
    back = consolidation.load(url, 1)
    assert (back.tasks, back.version, back.meta) == (1, 7, {"fisher": "exact"})
    assert np.array_equal(back.replay.x, c.replay.x) and back.replay.seen == 6
    assert all(np.array_equal(back.fisher[k], c.fisher[k]) for k in c.fisher)
    g = zarr.open_group(os.path.join(url, "continual", "consolidated-1"), mode="r")
    assert np.array_equal(g["replay/y"][...], c.replay.y)
    assert np.array_equal(g["anchor/0/w"][...], c.anchor["0/w"])


def test_a_corrupt_or_missing_consolidation_is_detected(tmp_path):
    url = str(tmp_path / "run")
    with pytest.raises(StoreError, match="no consolidation"):
        consolidation.load(url, 1)
    consolidation.save(url, _memory())
    manifest = os.path.join(url, "continual", "consolidated-1.json")
    with open(manifest) as f:
        doc = json.load(f)
    doc["sha256"]["fisher/0/b"] = "0" * 64  # the bytes no longer match what was recorded
    with open(manifest, "w") as f:
        json.dump(doc, f)
    with pytest.raises(CorruptData, match="fisher/0/b"):
        consolidation.load(url, 1)
    consolidation.save(url, _memory())  # rebuilt: derived data, the same content
    chunk = next(
        os.path.join(d, n)
        for d, _, names in os.walk(os.path.join(url, "continual", "consolidated-1", "replay", "x"))
        for n in names
        if n != "zarr.json"
    )
    with open(chunk, "rb") as f:
        raw = bytearray(f.read())
    raw[len(raw) // 2] ^= 0xFF
    with open(chunk, "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(CorruptData, match="replay/x"):
        consolidation.load(url, 1)
    with open(manifest, "w") as f:
        f.write("{not json")
    with pytest.raises(CorruptData, match="not valid JSON"):
        consolidation.load(url, 1)


# ---------------------------------------------------------------------- the metrics
def _history(matrix, evals_during=None):
    """Rounds whose evaluation gives row i of ``matrix`` at the end of task i."""
    out = []
    for i, row in enumerate(matrix):
        for extra in (evals_during or {}).get(i, []):
            out.append(
                {
                    "round": len(out),
                    "task": i,
                    "task_eval": [{"task": j, "accuracy": a} for j, a in enumerate(extra)],
                }
            )
        out.append(
            {
                "round": len(out),
                "task": i,
                "task_eval": [{"task": j, "accuracy": a} for j, a in enumerate(row[: i + 1])],
            }
        )
    return out


def test_the_report_computes_the_literatures_metrics():
    m = [[0.9], [0.5, 0.8], [0.4, 0.6, 0.7]]
    rep = report(_history(m, {2: [[0.2, 0.3, 0.1]]}), 3)
    assert rep["metric"] == "accuracy"
    assert rep["average"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert rep["backward_transfer"] == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert rep["forgetting"] == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)
    # the dip right after the switch to task 2 is the minimum, not the end-of-task value
    gap = rep["stability_gap"][1]
    assert gap["task"] == 2 and gap["before"] == pytest.approx(0.65)
    assert gap["min"] == pytest.approx(0.25) and gap["evaluations"] == 2
    assert rep["min_after_switch"] == [pytest.approx(0.5), pytest.approx(0.25)]


def test_for_a_loss_forgetting_is_the_rise():
    h = [
        {"round": 0, "task": 0, "task_eval": [{"task": 0, "loss": 1.0}]},
        {"round": 1, "task": 1, "task_eval": [{"task": 0, "loss": 1.5}, {"task": 1, "loss": 0.9}]},
    ]
    rep = report(h, 2)
    assert rep["metric"] == "loss" and rep["forgetting"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- the spec
def test_the_spec_validates_and_travels_with_the_run(tmp_path):
    cs = ContinualSpec(tasks=split_digits(), rounds_per_task=3, replay_size=10, scenario="task")
    spec = RunSpec(agent=SPEC, continual=cs, rounds=99, store_url=str(tmp_path))
    assert spec.rounds == 15  # the tasks set the rounds
    back = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    assert back.continual == cs and back.continual.plan(7) == cs.plan(7)
    assert cs.task_index(7) == 2 and cs.plan(7).task_round == 1
    assert cs.plan(6).consolidated == 2 and cs.plan(2).consolidated is None
    for bad, match in [
        (dict(mode="forever"), "mode"),
        (dict(scenario="task", tasks=(Task("a"),)), "classes"),
        (dict(tasks=()), "at least one task"),
        (dict(tasks=(Task("a"), Task("a"))), "unique"),
        (dict(fisher="diagonal"), "fisher"),
        (dict(replay_fraction=1.5), "replay-fraction"),
        (dict(freeze=("x",), down_weight=("x",)), "both"),
    ]:
        with pytest.raises(SpecError, match=match):
            ContinualSpec(**{"tasks": split_digits(), **bad})
    with pytest.raises(SpecError, match="classifier"):
        RunSpec(agent=AgentSpec(model="codelm", dataset="code"), continual=cs)


def test_joint_mixes_every_task_and_the_dataset_names_bad_keywords():
    from cluster_app.agent.data import task_dataset

    j = joint(split_digits())
    assert j.classes == tuple(range(10))
    data = task_dataset("digits", {}, j.data)
    _, y = next(data.batches(0, 0, 1, 1, 50))
    assert len(y) == 50 and len(set(y.tolist())) > 5  # drawn from every part
    with pytest.raises(SpecError, match="does not take"):
        task_dataset("digits", {}, ({"colour": 1},))


def test_the_ewc_penalty_reaches_the_train_step_and_holds_important_weights():
    """Avalanche once shipped an EWC whose penalty was always zero: here the same round trained
    with and without it must end at different distances from the anchor, as the Fisher
    weighs them."""
    cs = ContinualSpec(tasks=split_digits(), ewc_lambda=1e4, fisher_samples=64)
    r = cs.rounds_per_task  # task 1's first round
    dist = {}
    for lam in (0.0, 1e4):
        agent = _agent()
        memory = agent.continual.consolidate(cs, 1, 0, None)
        plan = ContinualSpec(tasks=split_digits(), ewc_lambda=lam).plan(r)
        agent.train(r, 0, 1, 20, plan, memory if lam else None)
        moved = agent.params()
        dist[lam] = sum(
            float((memory.fisher[k] * (moved[k] - memory.anchor[k]) ** 2).sum()) for k in moved
        )
    assert dist[0.0] > 0
    assert dist[1e4] < dist[0.0] / 5

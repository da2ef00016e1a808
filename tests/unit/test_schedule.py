"""The inner learning-rate schedule: its shape, the step that applies it, and the run that
sets its horizon."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from cluster_app.agent.agent import Agent
from cluster_app.agent.data import Digits
from cluster_app.agent.models import make_model
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.state import TrainState, make_optimizer, make_schedule, make_train_step
from cluster_app.errors import SpecError
from cluster_app.runs import RunSpec

MLP = {"model": "mlp", "dataset": "digits", "model_kwargs": {"hidden": 16}}


def test_cosine_warms_up_then_decays_to_its_end_fraction():
    s = make_schedule(0.01, "cosine", warmup_steps=10, decay_steps=110, end_fraction=0.1)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 0.005, rtol=1e-6)  # linear warmup
    np.testing.assert_allclose(float(s(10)), 0.01, rtol=1e-6)  # the peak
    np.testing.assert_allclose(float(s(60)), 0.0055, rtol=1e-5)  # half way down the cosine
    np.testing.assert_allclose(float(s(110)), 0.001, rtol=1e-5)
    np.testing.assert_allclose(float(s(10_000)), 0.001, rtol=1e-5)  # and stays there
    rates = [float(s(t)) for t in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_wsd_holds_its_rate_then_cools_down_linearly_over_the_last_fraction():
    s = make_schedule(0.01, "wsd", warmup_steps=10, decay_steps=110, cooldown=0.2)
    assert [round(float(s(t)), 6) for t in (0, 5, 10, 50, 88)] == [0, 0.005, 0.01, 0.01, 0.01]
    # the cooldown: the last 22 steps (20% of 110), from 0.01 down to 0
    np.testing.assert_allclose([float(s(t)) for t in (99, 110, 500)], [0.005, 0.0, 0.0], atol=1e-9)
    ended = make_schedule(0.01, "wsd", decay_steps=100, end_fraction=0.1, cooldown=0.5)
    np.testing.assert_allclose(
        [float(ended(t)) for t in (0, 50, 75, 100)], [0.01, 0.01, 0.0055, 0.001]
    )


def test_constant_has_no_schedule_unless_it_warms_up():
    assert make_schedule(0.01, "constant") is None
    s = make_schedule(0.01, "constant", warmup_steps=4)
    assert [round(float(s(t)), 6) for t in (0, 2, 4, 400)] == [0.0, 0.005, 0.01, 0.01]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "linear"}, "unknown lr schedule 'linear'"),
        ({"kind": "cosine"}, r"a cosine schedule needs decay_steps \(got None\)"),
        ({"kind": "cosine", "warmup_steps": 10, "decay_steps": 10}, "> warmup_steps"),
        ({"kind": "wsd"}, r"a wsd schedule needs decay_steps \(got None\)"),
        (
            {"kind": "wsd", "warmup_steps": 90, "decay_steps": 100, "cooldown": 0.5},
            "a cooldown of 50 steps does not fit after 90 warmup steps",
        ),
    ],
)
def test_bad_schedules_say_what_is_wrong(kwargs, message):
    with pytest.raises(SpecError, match=message):
        make_schedule(0.01, **kwargs)


def _mlp_step(schedule):
    data = Digits()
    model = make_model("mlp", **data.model_kwargs(), hidden=8, n_layers=1)
    tx = make_optimizer("adamw", 0.01, scheduled=schedule is not None)
    state = TrainState.create(model.init(jax.random.PRNGKey(0)), tx)
    return state, make_train_step(model, tx, schedule), next(data.batches(0, 0, 1, 1, 32))


def test_the_step_trains_at_the_schedules_rate_for_the_global_step_it_is_given():
    s = make_schedule(0.01, "cosine", decay_steps=100)
    state, step, batch = _mlp_step(s)
    before = jax.tree.map(np.asarray, state.params)
    _, m = step(state, batch, np.int32(50))
    np.testing.assert_allclose(float(m["learning_rate"]), float(s(50)), rtol=1e-6)

    state, step, batch = _mlp_step(s)
    state, m = step(state, batch, np.int32(100))  # the end of the decay: rate 0, no update
    assert float(m["learning_rate"]) == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_constant_rate_is_not_injected():
    # the plain optax chain, compiled as before schedules existed: constant-rate runs
    # measured then reproduce bit for bit
    state, step, batch = _mlp_step(None)
    assert not hasattr(state.opt_state, "hyperparams")
    _, m = step(state, batch, np.int32(7))
    assert "learning_rate" not in m


def test_an_agent_joining_mid_run_trains_at_the_runs_rate_not_from_the_top():
    spec = AgentSpec(**MLP, lr_schedule="cosine", warmup_steps=20, decay_steps=400)
    late = Agent(spec)  # a replacement: fresh optimiser state, round 3 of the run
    late.load(late.init_params(), version=0)
    _, metrics = late.train(round=3, shard=0, num_shards=1, steps=10)
    s = make_schedule(spec.learning_rate, "cosine", 20, 400)
    np.testing.assert_allclose(metrics["learning_rate"], float(s(3 * 10 + 9)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_a_run_gives_a_decay_without_a_horizon_its_own_length(kind):
    spec = RunSpec(agent=AgentSpec(**MLP, lr_schedule=kind), rounds=7, local_steps=30)
    assert spec.agent.decay_steps == 210
    given = RunSpec(agent=AgentSpec(**MLP, lr_schedule="cosine", decay_steps=99), rounds=7)
    assert given.agent.decay_steps == 99
    assert RunSpec(agent=AgentSpec(**MLP), rounds=7).agent.decay_steps is None  # constant


def test_an_agent_cannot_train_on_a_cosine_without_a_horizon():
    agent = Agent(AgentSpec(**MLP, lr_schedule="cosine"))
    agent.load(agent.init_params(), version=0)
    with pytest.raises(SpecError, match="'cosine' needs decay_steps; a run sets it"):
        agent.train(round=0, shard=0, num_shards=1, steps=1)


def test_bad_schedule_fields_name_the_field():
    with pytest.raises(SpecError, match="agent.lr-schedule = 'step' is not valid"):
        AgentSpec(**MLP, lr_schedule="step")
    with pytest.raises(SpecError, match="decay_steps=5 must exceed warmup_steps=5"):
        AgentSpec(**MLP, warmup_steps=5, decay_steps=5)

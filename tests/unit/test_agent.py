from __future__ import annotations

import numpy as np
import pytest

from cluster_app.agent.agent import Agent
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import SpecError

SMALL_CODE = {"max_train_chars": 50_000, "max_eval_chars": 5_000}


@pytest.fixture(scope="module")
def mlp_agent():
    agent = Agent(AgentSpec(model="mlp", dataset="digits", model_kwargs={"hidden": 32}))
    agent.load(agent.init_params(), version=0)
    return agent


def test_train_returns_delta_against_loaded_version(mlp_agent):
    base = mlp_agent.params()
    delta, metrics = mlp_agent.train(round=0, shard=0, num_shards=2, steps=20)
    assert set(delta) == set(base)
    new = mlp_agent.params()
    for k in base:
        np.testing.assert_allclose(base[k] + delta[k], new[k], rtol=1e-6, atol=1e-6)
    assert metrics["steps"] == 20 and metrics["loss_last"] < metrics["loss_first"]
    assert mlp_agent.version is None  # trained params are no longer version 0


def test_load_keeps_inner_optimizer_state(mlp_agent):
    mlp_agent.train(round=1, shard=0, num_shards=1, steps=5)
    opt_before = mlp_agent.state.opt_state
    mlp_agent.load(mlp_agent.init_params(), version=7)
    assert mlp_agent.state.opt_state is opt_before
    assert mlp_agent.version == 7


def test_evaluate_reports_baseline(mlp_agent):
    out = mlp_agent.evaluate(4)
    assert {"loss", "accuracy", "baseline_loss"} <= set(out)


def test_codelm_completion_has_requested_length():
    spec = AgentSpec(
        model="codelm",
        dataset="code",
        data_kwargs={**SMALL_CODE, "context": 16},
        model_kwargs={"context": 16, "d_model": 16, "n_layers": 1, "n_heads": 2},
    )
    agent = Agent(spec)
    agent.load(agent.init_params(), version=0)
    text = agent.complete("def f(", n_chars=12)
    assert len(text) == 12 and "\ufffd" not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "resnet"}, "agent.model = 'resnet' is not valid"),
        ({"model": "mlp", "dataset": "code"}, "model 'mlp' trains on dataset 'digits'"),
        ({"learning_rate": -0.1}, "agent.learning-rate = -0.1 is out of range"),
        ({"batch_size": "32"}, "agent.batch-size = '32' has type str"),
    ],
)
def test_bad_spec_names_the_field(kwargs, message):
    with pytest.raises(SpecError, match=message):
        AgentSpec(**kwargs)


def test_from_config_rejects_unknown_field():
    with pytest.raises(SpecError, match=r"unknown agent field\(s\) \['epochs'\]"):
        AgentSpec.from_config(epochs=3)


def test_zero_steps_rejected(mlp_agent):
    with pytest.raises(SpecError, match="steps=0 must be a positive integer"):
        mlp_agent.train(round=0, shard=0, num_shards=1, steps=0)

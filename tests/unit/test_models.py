from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cluster_app.agent.data import CodeCorpus, Digits
from cluster_app.agent.models import make_codelm, make_model
from cluster_app.agent.state import TrainState, make_eval_step, make_optimizer, make_train_step
from cluster_app.errors import SpecError


def _train(model, data, steps, lr=3e-3, batch=32):
    tx = make_optimizer("adamw", lr)
    state = TrainState.create(model.init(jax.random.PRNGKey(0)), tx)
    step = make_train_step(model, tx)
    losses = []
    for b in data.batches(0, 0, 1, steps, batch):
        state, m = step(state, b, np.int32(int(state.step)))
        losses.append(float(m["loss"]))
    return state, losses


def test_mlp_learns_digits_beyond_the_class_prior():
    data = Digits()
    model = make_model("mlp", **data.model_kwargs(), hidden=64, n_layers=2)
    state, _ = _train(model, data, 300)
    ev = make_eval_step(model)
    metrics = [ev(state.params, b) for b in data.eval_batches(4, 128)]
    loss = np.mean([float(m["loss"]) for m in metrics])
    acc = np.mean([float(m["accuracy"]) for m in metrics])
    assert loss < 0.5 * data.baseline_loss()
    assert acc > 0.85


def test_codelm_loss_decreases():
    data = CodeCorpus(context=16, max_train_chars=50_000, max_eval_chars=5_000)
    model = make_codelm(**data.model_kwargs(), d_model=32, n_layers=1, n_heads=2)
    _, losses = _train(model, data, 60, lr=1e-2, batch=16)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 1.0


def test_codelm_is_causal():
    model = make_codelm(vocab=98, context=8, d_model=16, n_layers=1, n_heads=2)
    params = model.init(jax.random.PRNGKey(1))
    x = jnp.arange(8)[None] % 98
    y = x.at[0, 5].set(42)
    a, b = model.apply(params, x), model.apply(params, y)
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-5)
    assert not np.allclose(a[0, 5:], b[0, 5:])


def test_train_step_advances_state():
    data = Digits()
    model = make_model("mlp", **data.model_kwargs(), hidden=8, n_layers=1)
    state, _ = _train(model, data, 3)
    assert int(state.step) == 3


def test_bad_model_arguments():
    with pytest.raises(SpecError, match="unknown model 'gpt'; choose one of codelm, mlp"):
        make_model("gpt")
    with pytest.raises(SpecError, match="d-model=30 must be divisible by n-heads=4"):
        make_codelm(vocab=10, d_model=30, n_heads=4)
    with pytest.raises(SpecError, match="unknown optimizer 'lion'"):
        make_optimizer("lion", 1e-3)

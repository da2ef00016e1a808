from __future__ import annotations

import json
import os
import subprocess
import sys

import dask
import pytest

from cluster_app import config
from cluster_app.errors import ConfigError


def test_defaults_load_and_validate():
    values = config.validate()
    assert values["agent.model"] == "codelm"
    assert values["train.local-steps"] == 100
    assert values["cluster.n-workers"] is None


def test_dask_config_set_overrides():
    with dask.config.set({"cluster-app.train.local-steps": 7}):
        assert config.get("train.local-steps") == 7
    assert config.get("train.local-steps") == 100


def test_environment_override_in_fresh_process():
    env = {
        **os.environ,
        "DASK_CLUSTER_APP__TRAIN__LOCAL_STEPS": "13",
        "DASK_CLUSTER_APP__AGENT__MODEL": "mlp",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, cluster_app.config as c;"
            "print(json.dumps([c.get('train.local-steps'), c.get('agent.model')]))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [13, "mlp"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.local-steps", "ten", "has type str; expected int"),
        ("train.local-steps", 0, "out of range"),
        ("train.local-steps", True, "has type bool"),
        ("agent.learning-rate", -1.0, "out of range"),
        ("agent.model", "gpt", "expected one of 'codelm', 'mlp'"),
        ("agent.codelm.d-model", 2.5, "expected int"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with dask.config.set({f"cluster-app.{key}": value}), pytest.raises(ConfigError) as info:
        config.get(key)
    assert f"cluster-app.{key}" in str(info.value)
    assert message in str(info.value)


def test_int_accepted_for_float_field():
    assert config.get("agent.learning-rate", 1) == 1.0


def test_unknown_key():
    with pytest.raises(ConfigError, match="unknown config key cluster-app.train.nope"):
        config.get("train.nope")

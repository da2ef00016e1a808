from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import os
import subprocess
import sys

import dask
import pytest
import yaml

from cluster_app import config
from cluster_app.errors import ConfigError, SpecError


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


# ---------------------------------------------------------------------- one source of defaults

SPEC_CLASSES = [
    ("cluster_app.agent.spec", "AgentSpec"),
    ("cluster_app.sync.spec", "SyncSpec"),
    ("cluster_app.runs.spec", "RunSpec"),
    ("cluster_app.placement.settings", "PlacementSettings"),
]


def _yaml_default(key: str):
    """The default as the packaged YAML file itself has it (read here, not through config)."""
    path = os.path.join(os.path.dirname(config.__file__), "cluster_app.yaml")
    with open(path) as f:
        node = yaml.safe_load(f)["cluster-app"]
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("module", "name"), SPEC_CLASSES)
def test_every_dataclass_default_is_the_yaml_default(module, name):
    cls = getattr(importlib.import_module(module), name)
    settings = config.settings_of(cls)
    assert settings, f"{name} mirrors no config key"
    for field in settings.values():
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is None and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        expected = _yaml_default(field.metadata["config"])
        convert = field.metadata["convert"]
        if convert is not None:
            expected = convert(expected)
        assert default == expected, (name, field.name)


def test_run_spec_standby_default_is_the_packaged_one():
    from cluster_app.agent.spec import AgentSpec
    from cluster_app.runs.spec import RunSpec

    assert RunSpec(agent=AgentSpec()).standby == _yaml_default("recovery.standby") == 2


@contextlib.contextmanager
def _config_without_our_namespace(how: str):
    saved = copy.deepcopy(dask.config.config)
    try:
        if how == "refreshed":
            dask.config.refresh()
        elif how == "reset":  # what a test fixture or an embedding application does
            dask.config.config.clear()
            dask.config.config.update(
                {k: v for k, v in copy.deepcopy(saved).items() if k != "cluster-app"}
            )
            assert "cluster-app" not in dask.config.config
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


@pytest.mark.parametrize("how", ["refreshed", "reset", "set-empty"])
def test_packaged_defaults_apply_when_dask_config_lacks_ours(how):
    from cluster_app.agent.spec import AgentSpec
    from cluster_app.placement import PlacementPlugin
    from cluster_app.runs.spec import RunSpec
    from cluster_app.sync.spec import SyncSpec

    with contextlib.ExitStack() as stack:
        stack.enter_context(_config_without_our_namespace(how))
        if how == "set-empty":
            stack.enter_context(dask.config.set({"cluster-app": {}}))
        plugin = PlacementPlugin()  # as a scheduler preload builds it
        assert plugin.settings.weights == (0.6, 0.3, 0.1)
        agent = AgentSpec.from_config()
        assert agent.model == "codelm" and agent.model_kwargs["d_model"] == 96
        assert SyncSpec.from_config().codec == _yaml_default("sync.codec")
        assert RunSpec.from_config().rounds == 30
        assert config.get("placement.weights") == {"load": 0.6, "latency": 0.3, "priority": 0.1}
        assert config.validate()["train.local-steps"] == 100


def test_schema_choices_are_the_registries():
    from cluster_app.agent.models import MODELS
    from cluster_app.agent.spec import MODEL_DATA
    from cluster_app.agent.state import OPTIMIZERS, SCHEDULES
    from cluster_app.sync.codecs import CODECS
    from cluster_app.sync.outer import OUTER_OPTIMIZERS
    from cluster_app.versions.gate import METRICS
    from cluster_app.versions.merge import MERGES

    def choices(key):
        return set(config.SCHEMA[key].choices)

    assert choices("agent.model") == set(MODELS) == set(MODEL_DATA)
    assert choices("agent.dataset") == set(MODEL_DATA.values())
    assert choices("agent.optimizer") == set(OPTIMIZERS)
    assert choices("agent.lr-schedule") == set(SCHEDULES)
    assert choices("sync.codec") == set(CODECS)
    assert choices("sync.outer") == set(OUTER_OPTIMIZERS)
    assert choices("versions.gate.metric") == set(METRICS)
    assert choices("versions.merge") == set(MERGES)


def test_every_yaml_key_has_a_schema_entry_and_back():
    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    path = os.path.join(os.path.dirname(config.__file__), "cluster_app.yaml")
    with open(path) as f:
        keys = set(leaves(yaml.safe_load(f)["cluster-app"]))
    assert keys == set(config.SCHEMA)


def test_unknown_fields_name_the_valid_ones():
    from cluster_app.sync.spec import SyncSpec

    with pytest.raises(SpecError, match=r"unknown sync field\(s\) \['zip'\]; valid: .*'codec'"):
        SyncSpec.from_config(zip=1)

"""Configuration: defaults in ``cluster_app.yaml`` under ``cluster-app:``, read through dask.config.

Defaults are registered with :func:`dask.config.update_defaults` at import, so values set by the
user (YAML files, ``DASK_CLUSTER_APP__...`` environment variables, ``dask.config.set``) win.
Values are read at use, never cached at import, and every read is validated against
:data:`SCHEMA`: a wrong type or an out-of-range value raises
:class:`~cluster_app.errors.ConfigError` naming the full key and what would be valid. A key
that Dask's configuration lacks (it was reset or replaced, as test fixtures and embedding
applications do) falls back to the packaged default.

The YAML file is the one source of defaults. A spec dataclass names the key each of its fields
mirrors with :func:`setting` (field metadata; the field's default is the packaged one), builds
itself from the current configuration with :func:`from_config` and validates itself with
:func:`check`::

    @dataclass(frozen=True)
    class SyncSpec:
        codec: str = setting("sync.codec")

        def __post_init__(self):
            config.check(self)

        @classmethod
        def build(cls, **overrides):
            return cls(**config.from_config(cls, overrides))
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.config
import yaml

from cluster_app.errors import ClusterAppError, ConfigError, SpecError

__all__ = ["SCHEMA", "Field", "check", "default", "from_config", "get", "setting", "validate"]

PREFIX = "cluster-app"

_fn = os.path.join(os.path.dirname(__file__), "cluster_app.yaml")
with open(_fn) as _f:
    _defaults = yaml.safe_load(_f)
dask.config.update_defaults(_defaults)
_MISSING = object()


@dataclass(frozen=True)
class Field:
    """What a config value may be: its type(s), an inclusive numeric range, or a set of choices."""

    types: tuple[type, ...]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = " or ".join(t.__name__ for t in self.types)
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        rng = f" in [{lo}, {hi}]" if (self.low, self.high) != (None, None) else ""
        return f"{kind}{rng}" + (" or null" if self.nullable else "")

    def check(self, key: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        # bool is an int subclass; never accept it for a numeric field
        ok_type = isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types
        )
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            ok_type, value = True, float(value)
        if not ok_type:
            raise ConfigError(
                f"config key {PREFIX}.{key} = {value!r} has type {type(value).__name__}; "
                f"expected {self.describe()}"
            )
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"config key {PREFIX}.{key} = {value!r} is not valid; expected {self.describe()}"
            )
        low, high = self.low, self.high
        if isinstance(value, (int, float)) and (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            raise ConfigError(
                f"config key {PREFIX}.{key} = {value!r} is out of range; expected {self.describe()}"
            )
        return value


_INT, _FLOAT, _STR = (int,), (float,), (str,)
# the registries' keys (agent.models.MODELS, agent.state.OPTIMIZERS and SCHEDULES,
# sync.codecs.CODECS, sync.outer.OUTER_OPTIMIZERS); those modules import JAX or sit above this
# one, so the names are listed here and tests/unit/test_config.py keeps the two equal
MODELS = ("codelm", "mlp")
DATASETS = ("code", "digits")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "wsd")
CODECS = ("fp32", "fp16", "int8", "int4", "int3", "int2")
OUTER_OPTIMIZERS = ("average", "nesterov")
METRICS = ("heldout_loss", "accuracy", "char_accuracy", "exact_match")  # versions.gate.METRICS
MERGES = ("soup", "ties")  # versions.merge.MERGES
CONTINUAL_MODES = ("incremental", "transfer", "lifelong")  # learning.spec.MODES
SCENARIOS = ("class", "task", "domain")  # learning.spec.SCENARIOS
FISHERS = ("exact", "empirical")  # learning.spec.FISHERS

SCHEMA: dict[str, Field] = {
    "cluster.n-workers": Field(_INT, 1, 1024, nullable=True),
    "cluster.compilation-cache": Field(_STR, nullable=True),
    "cluster.threads-per-worker": Field(_INT, 1, 64),
    "cluster.memory-limit": Field((str, int)),
    "cluster.dashboard-address": Field(_STR, nullable=True),
    "agent.model": Field(_STR, choices=MODELS),
    "agent.dataset": Field(_STR, choices=DATASETS),
    "agent.seed": Field(_INT, 0, 2**31 - 1),
    "agent.batch-size": Field(_INT, 1, 4096),
    "agent.optimizer": Field(_STR, choices=OPTIMIZERS),
    "agent.learning-rate": Field(_FLOAT, 1e-7, 10.0),
    "agent.lr-schedule": Field(_STR, choices=SCHEDULES),
    "agent.warmup-steps": Field(_INT, 0, 10**9),
    "agent.decay-steps": Field(_INT, 1, 10**12, nullable=True),
    "agent.lr-end-fraction": Field(_FLOAT, 0.0, 1.0),
    "agent.lr-cooldown": Field(_FLOAT, 0.001, 1.0),
    "agent.codelm.context": Field(_INT, 4, 2048),
    "agent.codelm.d-model": Field(_INT, 8, 4096),
    "agent.codelm.n-layers": Field(_INT, 1, 64),
    "agent.codelm.n-heads": Field(_INT, 1, 64),
    "agent.mlp.hidden": Field(_INT, 1, 65536),
    "agent.mlp.n-layers": Field(_INT, 1, 64),
    "data.code.max-train-chars": Field(_INT, 10_000, 10**9),
    "data.code.max-eval-chars": Field(_INT, 1_000, 10**9),
    "data.code.holdout-every": Field(_INT, 2, 1000),
    "train.rounds": Field(_INT, 1, 10**9),
    "train.local-steps": Field(_INT, 1, 10**7),
    "train.max-seconds": Field(_FLOAT, 0.0, None, nullable=True),
    "train.eval-batches": Field(_INT, 1, 10**6),
    "train.eval-every": Field(_INT, 1, 10**9, nullable=True),
    "train.target-loss": Field(_FLOAT, 0.0, None, nullable=True),
    "train.progress": Field((bool,)),
    "train.init-from": Field(_STR, nullable=True),
    "train.agents": Field(_INT, 1, 10**6, nullable=True),
    "scaling.minimum": Field(_INT, 0, 10**6),
    "scaling.maximum": Field(_INT, 1, 10**6),
    "scaling.target-backlog-seconds": Field(_FLOAT, 0.01, 10**6),
    "scaling.scale-down-seconds": Field(_FLOAT, 0.0, 86400.0),
    "sync.codec": Field(_STR, choices=CODECS),
    "sync.outer": Field(_STR, choices=OUTER_OPTIMIZERS),
    "sync.outer-learning-rate": Field(_FLOAT, 1e-6, 10.0),
    "sync.outer-momentum": Field(_FLOAT, 0.0, 0.999),
    "sync.full-every": Field(_INT, 1, 10**9),
    "sync.max-staleness": Field(_INT, 0, 1000),
    "sync.push-timeout": Field(_FLOAT, 0.001, 3600.0),
    "sync.async-push": Field((bool,)),
    "sync.write-window-max": Field(_INT, 1, 1024),
    "recovery.standby": Field(_INT, 0, 1024),
    "recovery.takeover-timeout": Field(_FLOAT, 0.001, None, nullable=True),
    "recovery.checkpoint-every-rounds": Field(_INT, 1, 10**9, nullable=True),
    "recovery.checkpoint-every-seconds": Field(_FLOAT, 0.001, None, nullable=True),
    "recovery.keep": Field(_INT, 1, 10**6),
    "recovery.checkpoint-dir": Field(_STR, nullable=True),
    "store.url": Field(_STR),
    "continual.mode": Field(_STR, choices=CONTINUAL_MODES),
    "continual.rounds-per-task": Field(_INT, 1, 10**9),
    "continual.scenario": Field(_STR, choices=SCENARIOS),
    "continual.replay-size": Field(_INT, 0, 10**8),
    "continual.replay-fraction": Field(_FLOAT, 0.0, 1.0),
    "continual.ewc-lambda": Field(_FLOAT, 0.0, 1e12),
    "continual.fisher": Field(_STR, choices=FISHERS),
    "continual.fisher-samples": Field(_INT, 1, 10**7),
    "continual.freeze": Field((list, tuple)),
    "continual.down-weight": Field((list, tuple)),
    "continual.down-weight-scale": Field(_FLOAT, 0.0, 1.0),
    "continual.unfreeze-after": Field(_INT, 0, 10**9, nullable=True),
    "continual.rewarm-steps": Field(_INT, 0, 10**9),
    "continual.eval-every": Field(_INT, 1, 10**9),
    "serving.host": Field(_STR),
    "serving.port": Field(_INT, 0, 65535),
    "serving.name": Field(_STR),
    "serving.latency-budget-ms": Field(_FLOAT, 1.0, 600_000.0),
    "serving.window-fraction": Field(_FLOAT, 0.0, 1.0),
    "serving.max-batch": Field(_INT, 1, 4096),
    "serving.max-queue": Field(_INT, 1, 10**7),
    "serving.max-in-flight": Field(_INT, 1, 1024),
    "serving.max-prompt-chars": Field(_INT, 1, 10**7),
    "serving.max-tokens": Field(_INT, 1, 4096),
    "serving.default-max-tokens": Field(_INT, 1, 4096),
    "serving.timeout": Field(_FLOAT, 0.01, 3600.0),
    "serving.priority": Field(_INT, -(10**6), 10**6),
    "serving.free-refresh": Field(_FLOAT, 0.01, 60.0),
    "serving.versions-per-worker": Field(_INT, 1, 1024),
    "serving.canary.check-every": Field(_FLOAT, 0.01, 3600.0),
    "serving.canary.min-requests": Field(_INT, 1, 10**7),
    "serving.canary.min-latency-requests": Field(_INT, 1, 10**7),
    "serving.canary.max-error-rate": Field(_FLOAT, 0.0, 1.0),
    "serving.canary.max-p99-ratio": Field(_FLOAT, 1.0, 1000.0),
    "serving.canary.max-quality-regression": Field(_FLOAT, 0.0, 100.0),
    "serving.canary.quality-window": Field(_INT, 1, 10**5),
    "versions.eval.batches": Field(_INT, 1, 10**5),
    "versions.eval.batch-size": Field(_INT, 1, 4096),
    "versions.eval.completion-chars": Field(_INT, 1, 1024),
    "versions.gate.metric": Field(_STR, choices=METRICS),
    "versions.gate.threshold": Field(_FLOAT, None, None, nullable=True),
    "versions.gate.min-absolute-change": Field(_FLOAT, None, None, nullable=True),
    "versions.gate.min-relative-change": Field(_FLOAT, None, None, nullable=True),
    "versions.merge": Field(_STR, choices=MERGES),
    "versions.ties-density": Field(_FLOAT, 0.001, 1.0),
    "versions.reflog-retention-days": Field(_FLOAT, 0.0, None),
    "versions.gc-grace-seconds": Field(_FLOAT, 0.0, None),
    "placement.enabled": Field((bool,)),
    "placement.key-prefixes": Field((list, tuple)),
    "placement.weights.load": Field(_FLOAT, 0.0, 100.0),
    "placement.weights.latency": Field(_FLOAT, 0.0, 100.0),
    "placement.weights.priority": Field(_FLOAT, 0.0, 100.0),
    "placement.latency-reference": Field(_FLOAT, 1e-6, 3600.0),
    "placement.aging": Field(_FLOAT, 0.0, 1e6),
    "placement.max-prefetch": Field(_INT, 0, 1024),
    "placement.prefetch-threshold": Field(_FLOAT, 0.0, 1000.0),
    "placement.hold": Field((bool,)),
    "placement.hold-margin": Field(_FLOAT, 0.0, 100.0),
    "placement.lookahead": Field(_INT, 1, 100_000),
    "placement.refresh-interval": Field(_FLOAT, 0.01, 60.0),
    "placement.duration-alpha": Field(_FLOAT, 0.01, 1.0),
    "placement.learn-interval": Field(_FLOAT, 0.0, 10.0),
}


def default(key: str) -> Any:
    """The packaged default of ``cluster-app.<key>`` (``cluster_app.yaml``), whatever Dask's
    configuration holds now; a key with sub-keys gives a dict."""
    node: Any = _defaults[PREFIX]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key {PREFIX}.{key}; known keys: {', '.join(SCHEMA)}")
        node = node[part]
    return copy.deepcopy(node)


def get(key: str, override: Any = None) -> Any:
    """Return the validated value of ``cluster-app.<key>``; ``override`` (if not None) wins.

    A key whose sub-keys are in the schema (``"placement.weights"``) gives a dict of them,
    named as Python names (``d-model`` -> ``d_model``).

    Parameters
    ----------
    key : str
        Dotted key below ``cluster-app``, e.g. ``"train.local-steps"``.
    override : optional
        A value given explicitly by the caller; it is validated the same way.
    """
    if key not in SCHEMA:
        group = {k[len(key) + 1 :]: k for k in SCHEMA if k.startswith(key + ".")}
        if group and override is None:
            return {name.replace("-", "_"): get(k) for name, k in group.items()}
        raise ConfigError(f"unknown config key {PREFIX}.{key}; known keys: {', '.join(SCHEMA)}")
    if override is not None:
        value = override
    else:  # a reset or replaced configuration may lack our namespace: packaged defaults apply
        value = dask.config.get(f"{PREFIX}.{key}", default=_MISSING)
        if value is _MISSING:
            value = default(key)
    return SCHEMA[key].check(key, value)


def setting(key: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that mirrors ``cluster-app.<key>``; its default is the packaged one.

    ``convert`` turns the config value into the field's type (a list into a tuple, a dict of
    sub-keys into a NamedTuple); the default is converted the same way.
    """
    value = default(key)
    value = convert(value) if convert is not None else value
    meta = {"config": key, "convert": convert}
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=meta)
    return dataclasses.field(default=value, metadata=meta)


def settings_of(cls: type) -> dict[str, dataclasses.Field]:
    """The :func:`setting` fields of dataclass ``cls``, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if "config" in f.metadata}


def from_config(
    cls: type,
    overrides: dict[str, Any],
    extra: tuple[str, ...] = (),
    what: str = "field",
    error: type[ClusterAppError] = SpecError,
) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls``: every :func:`setting` field read from the
    current configuration, then the ``overrides`` that are not None.

    Names that are neither settings of ``cls`` nor in ``extra`` raise ``error``
    ("unknown <what>(s) [...]; valid: [...]").
    """
    known = settings_of(cls)
    unknown = set(overrides) - set(known) - set(extra)
    if unknown:
        valid = sorted([*known, *extra])
        raise error(f"unknown {what}(s) {sorted(unknown)}; valid: {valid}")
    kw = {}
    for name, f in known.items():
        value = get(f.metadata["config"])
        convert = f.metadata["convert"]
        kw[name] = convert(value) if convert is not None else value
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


def check(obj: Any) -> None:
    """Validate every :func:`setting` field of dataclass instance ``obj`` against its key;
    a bad one raises :class:`~cluster_app.errors.SpecError` naming it and the valid range."""
    for name, f in settings_of(type(obj)).items():
        key = f.metadata["config"]
        if key in SCHEMA:  # a group (placement.weights) validates itself
            try:
                SCHEMA[key].check(key, getattr(obj, name))
            except ConfigError as e:
                raise SpecError(str(e).replace(f"config key {PREFIX}.", "")) from None


def validate() -> dict[str, Any]:
    """Validate every known key in the current configuration and return them as a flat dict."""
    return {key: get(key) for key in SCHEMA}

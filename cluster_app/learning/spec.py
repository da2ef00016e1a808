"""What a continual run is, as plain validated data: :class:`Task`, :class:`ContinualSpec`,
and the :class:`RoundPlan` the run loop hands each agent.

No JAX here (the client and the run controller import it). A run is continual when its
``RunSpec.continual`` is set; the mode names what it is for:

- ``"incremental"``: absorb new data on top of the version the run starts from
  (``RunSpec.init_from``: a registry ref, or ``run:<run-id>[@<version>]`` for any version of
  another run, a running one included), with a learning-rate re-warm-up;
- ``"transfer"``: adapt a version trained on another domain, with parts of the model frozen or
  down-weighted (``freeze``, ``down_weight``; ``optax.multi_transform``) until ``unfreeze_after``;
- ``"lifelong"``: a sequence of tasks without forgetting: a replay buffer (``replay_size``) and
  an EWC penalty with an exact diagonal Fisher (``ewc_lambda``, ``fisher``), each switchable.

The three share one machinery: tasks run ``rounds_per_task`` rounds each, in order; at each
switch the finished tasks are *consolidated* (replay samples drawn, a Fisher computed at the
committed version) into the run's store; ``prior_tasks`` are tasks the starting version already
learnt (consolidated before round 0 and evaluated like the others).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any

from cluster_app import config
from cluster_app.config import setting
from cluster_app.errors import SpecError

__all__ = [
    "FISHERS",
    "MODES",
    "SCENARIOS",
    "ContinualSpec",
    "RoundPlan",
    "Task",
    "code_domains",
    "joint",
    "matches",
    "permuted_digits",
    "split_digits",
]

MODES = config.CONTINUAL_MODES
# class: one head over every class seen (no task identity); task: the head is masked to the
# task's own classes in training and evaluation (task identity given); domain: same classes,
# new inputs (permuted digits, another code corpus)
SCENARIOS = config.SCENARIOS
FISHERS = config.FISHERS


@dataclass(frozen=True)
class Task:
    """One task: a variant of the agent's dataset (``data`` is merged over its data kwargs).

    ``data`` is one dict, or several for a mixture (joint training draws evenly from each).
    Digits take ``classes`` (a subset of labels) and ``permute_seed`` (a fixed pixel
    permutation); the code corpus takes ``root`` (a source tree) and its size limits.
    """

    name: str
    data: tuple[dict, ...] = ({},)

    def __post_init__(self) -> None:
        parts = (self.data,) if isinstance(self.data, dict) else tuple(self.data)
        if not parts or not all(isinstance(p, dict) for p in parts):
            raise SpecError(f"task {self.name!r}: data must be a dict or a list of dicts")
        object.__setattr__(self, "data", tuple(_hashable(p) for p in parts))

    @property
    def classes(self) -> tuple[int, ...] | None:
        """The task's labels (every part's ``classes`` together), or None for all of them."""
        sets = [p.get("classes") for p in self.data]
        if any(s is None for s in sets):
            return None
        return tuple(sorted({int(c) for s in sets if s is not None for c in s}))

    @classmethod
    def from_dict(cls, d: dict | Task) -> Task:
        return d if isinstance(d, Task) else cls(name=d["name"], data=tuple(d["data"]))


def _hashable(part: dict) -> dict:
    # lists (from JSON) become tuples, so a part can key a dataset cache
    return {k: tuple(v) if isinstance(v, list) else v for k, v in part.items()}


def _tasks(value: Any) -> tuple[Task, ...]:
    return tuple(Task.from_dict(t) for t in value or ())


@dataclass(frozen=True)
class ContinualSpec:
    """A continual run: its tasks, what protects old ones, and what adapts (module docstring)."""

    mode: str = setting("continual.mode")
    tasks: tuple[Task, ...] = ()
    prior_tasks: tuple[Task, ...] = ()
    rounds_per_task: int = setting("continual.rounds-per-task")
    scenario: str = setting("continual.scenario")
    replay_size: int = setting("continual.replay-size")  # 0: no replay
    replay_fraction: float = setting("continual.replay-fraction")  # of each batch, once filled
    ewc_lambda: float = setting("continual.ewc-lambda")  # 0: no EWC
    fisher: str = setting("continual.fisher")
    fisher_samples: int = setting("continual.fisher-samples")
    freeze: tuple[str, ...] = setting("continual.freeze", tuple)  # leaf globs: no update
    down_weight: tuple[str, ...] = setting("continual.down-weight", tuple)
    down_weight_scale: float = setting("continual.down-weight-scale")
    unfreeze_after: int | None = setting("continual.unfreeze-after")  # rounds; None: never
    rewarm_steps: int = setting("continual.rewarm-steps")  # at the start and each switch
    eval_every: int = setting("continual.eval-every")  # rounds between per-task evaluations
    seed: int = 0  # the replay reservoir's and the Fisher sample's

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _tasks(self.tasks))
        object.__setattr__(self, "prior_tasks", _tasks(self.prior_tasks))
        object.__setattr__(self, "freeze", tuple(self.freeze))
        object.__setattr__(self, "down_weight", tuple(self.down_weight))
        config.check(self)
        if self.mode not in MODES:
            raise SpecError(f"continual mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.scenario not in SCENARIOS:
            raise SpecError(f"scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if self.fisher not in FISHERS:
            raise SpecError(f"fisher {self.fisher!r}; choose one of {', '.join(FISHERS)}")
        if not self.tasks:
            raise SpecError("a continual run needs at least one task (tasks=[...])")
        names = [t.name for t in self.all_tasks]
        if len(set(names)) != len(names):
            raise SpecError(f"task names must be unique, got {names}")
        if self.scenario == "task" and any(t.classes is None for t in self.all_tasks):
            raise SpecError("the task-incremental scenario needs every task's data to name classes")
        if set(self.freeze) & set(self.down_weight):
            raise SpecError("a leaf pattern cannot be both frozen and down-weighted")

    @classmethod
    def from_config(cls, **overrides: Any) -> ContinualSpec:
        """Defaults from ``cluster-app.continual.*``; keywords (``tasks=`` among them) win."""
        kw = config.from_config(
            cls, overrides, extra=("tasks", "prior_tasks", "seed"), what="continual field"
        )
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict) -> ContinualSpec:
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ the schedule
    @property
    def all_tasks(self) -> tuple[Task, ...]:
        return self.prior_tasks + self.tasks

    @property
    def rounds(self) -> int:
        """The run's rounds: ``rounds_per_task`` for each (new) task."""
        return len(self.tasks) * self.rounds_per_task

    def task_index(self, round: int) -> int:
        """The index (into :attr:`all_tasks`) of the task round ``round`` trains on."""
        return len(self.prior_tasks) + min(round // self.rounds_per_task, len(self.tasks) - 1)

    def start_round(self, k: int) -> int:
        """The first round of task ``k`` (an index into :attr:`all_tasks`; a prior task, or the
        first new one, starts at round 0)."""
        return max(0, k - len(self.prior_tasks)) * self.rounds_per_task

    @property
    def task_classes(self) -> tuple[tuple[int, ...] | None, ...]:
        """Every task's classes in the task-incremental scenario (its heads), else ()."""
        return tuple(t.classes for t in self.all_tasks) if self.scenario == "task" else ()

    def consolidated_before(self, round: int) -> int:
        """How many tasks are finished when round ``round`` starts (what replay and EWC
        protect then): the prior tasks and the new ones already trained."""
        return self.task_index(round)

    @property
    def protects(self) -> bool:
        return self.replay_size > 0 or self.ewc_lambda > 0

    def plan(self, round: int) -> RoundPlan:
        """What an agent needs to train round ``round`` (see :class:`RoundPlan`)."""
        k = self.task_index(round)
        frozen = self.unfreeze_after is None or round < self.unfreeze_after
        done = self.consolidated_before(round)
        return RoundPlan(
            task=k,
            data=self.all_tasks[k].data,
            task_classes=self.task_classes,
            task_round=round - self.start_round(k),
            rewarm_steps=self.rewarm_steps,
            consolidated=done if self.protects and done > 0 else None,
            replay_fraction=self.replay_fraction if self.replay_size > 0 else 0.0,
            ewc_lambda=self.ewc_lambda,
            freeze=self.freeze if frozen else (),
            down_weight=self.down_weight if frozen else (),
            down_weight_scale=self.down_weight_scale,
            seed=self.seed,
        )


@dataclass(frozen=True)
class RoundPlan:
    """One round's continual instructions for an agent (plain data; picklable, hashable).

    ``consolidated`` is the number of finished tasks whose consolidation (replay buffer,
    Fisher and anchor) the agent reads from the run's store, or None when there is none.
    """

    task: int
    data: tuple[dict, ...]
    task_round: int  # rounds since this task started (the re-warm-up counts from there)
    # every task's classes (task-incremental: a replayed example keeps its own task's head)
    task_classes: tuple[tuple[int, ...] | None, ...] = ()
    rewarm_steps: int = 0
    consolidated: int | None = None
    replay_fraction: float = 0.0
    ewc_lambda: float = 0.0
    freeze: tuple[str, ...] = ()
    down_weight: tuple[str, ...] = ()
    down_weight_scale: float = 1.0
    seed: int = 0

    def lr_factor(self, step_in_task: int) -> float:
        """The re-warm-up multiplier of the inner rate, ``step_in_task`` steps into the task."""
        if self.rewarm_steps <= 0:
            return 1.0
        return min(1.0, (step_in_task + 1) / self.rewarm_steps)


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether flat leaf ``path`` (``"blocks/0/qkv/w"``) falls under any glob in ``patterns``;
    a pattern also matches everything below it (``"blocks/0"`` covers its leaves)."""
    return any(
        fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p + "/*") for p in patterns
    )


# ---------------------------------------------------------------------- the standard workloads
def split_digits(n_tasks: int = 5) -> tuple[Task, ...]:
    """Split-Digits: sklearn's digits as ``n_tasks`` tasks of 10 / n_tasks classes each
    (0-1, 2-3, ...), the digits analogue of Split MNIST."""
    if 10 % n_tasks:
        raise SpecError(f"n_tasks={n_tasks} must divide the 10 digit classes")
    k = 10 // n_tasks
    return tuple(
        Task(f"digits-{i * k}-{i * k + k - 1}", ({"classes": tuple(range(i * k, i * k + k))},))
        for i in range(n_tasks)
    )


def permuted_digits(n_tasks: int = 5, seed: int = 0) -> tuple[Task, ...]:
    """Permuted-Digits: every task is all 10 classes under its own fixed pixel permutation
    (task 0 is the identity), the digits analogue of Permuted MNIST."""
    return tuple(
        Task(f"permuted-{i}", ({"permute_seed": None if i == 0 else seed * 1000 + i},))
        for i in range(n_tasks)
    )


def joint(tasks: tuple[Task, ...], name: str = "joint") -> Task:
    """One task that mixes all of ``tasks``' data: joint training, the upper bound."""
    return Task(name, tuple(p for t in tasks for p in t.data))


def code_domains(*roots: tuple[str, str], **limits: Any) -> tuple[Task, ...]:
    """Code-corpus tasks, one per ``(name, source root)``; ``limits`` are the corpus's size
    keywords (``max_train_chars``, ...)."""
    return tuple(Task(name, ({"root": root, **limits},)) for name, root in roots)

"""The adaptive target's pure policy, its stabiliser, and the roles' width cap."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_app.errors import SpecError
from cluster_app.runs.roles import Roles, assign_roles
from cluster_app.scaling.policy import Demand, ScalingSpec, Stabilizer, raw_target

SPEC = ScalingSpec.from_config(
    minimum=1, maximum=64, target_backlog_seconds=5.0, scale_down_seconds=60.0
)


def test_the_target_is_the_runs_width_plus_other_work_plus_the_standbys():
    assert raw_target(Demand(run_width=4, other_seconds=0, standby=2), SPEC) == 6
    # 5 s of other work per worker: 25 s of evaluations want 5 workers, 26 s want 6
    assert raw_target(Demand(run_width=0, other_seconds=25.0, standby=0), SPEC) == 5
    assert raw_target(Demand(run_width=0, other_seconds=26.0, standby=0), SPEC) == 6
    # a burst a worker clears within the target asks for one
    assert raw_target(Demand(run_width=3, other_seconds=2.0, standby=1), SPEC) == 5
    assert raw_target(Demand(), SPEC) == 1  # the minimum
    assert raw_target(Demand(run_width=100, other_seconds=100, standby=2), SPEC) == 64  # the max


def test_bad_bounds_are_refused_naming_the_settings():
    with pytest.raises(SpecError, match="scaling.minimum"):
        ScalingSpec.from_config(minimum=5, maximum=2)


@given(
    width=st.integers(0, 500),
    other=st.floats(0, 5000),
    standby=st.integers(0, 8),
    backlog=st.floats(0.01, 60),
    lo=st.integers(0, 10),
    span=st.integers(0, 200),
)
def test_the_target_is_clamped_monotone_and_keeps_the_standbys(
    width, other, standby, backlog, lo, span
):
    spec = ScalingSpec.from_config(
        minimum=lo, maximum=lo + span + 1, target_backlog_seconds=backlog
    )
    t = raw_target(Demand(width, other, standby), spec)
    assert spec.minimum <= t <= spec.maximum
    # never fewer than the runs' width and their standbys, unless the maximum says so
    assert t >= min(width + standby, spec.maximum)
    # more demand never asks for fewer workers
    assert raw_target(Demand(width + 1, other, standby), spec) >= t
    assert raw_target(Demand(width, other + 1.0, standby), spec) >= t
    assert raw_target(Demand(width, other, standby + 1), spec) >= t


@given(st.lists(st.integers(0, 100), min_size=1, max_size=60), st.floats(0, 30))
def test_the_stabiliser_scales_up_at_once_and_down_only_after_its_window(raws, window):
    stab = Stabilizer(window)
    for k, raw in enumerate(raws):
        now = float(k)
        target = stab(raw, now)
        assert target >= raw  # up at once: never below what is needed now
        recent = [r for j, r in enumerate(raws[: k + 1]) if j >= now - window]
        assert target == max(recent)  # down only to the highest target of the window


def test_a_burst_then_quiet_scales_down_once_not_back_and_forth():
    stab = Stabilizer(10.0)
    targets = [stab(raw, float(t)) for t, raw in enumerate([2, 8, 2, 8, 2] + [2] * 20)]
    assert targets[:5] == [2, 8, 8, 8, 8]
    changes = sum(a != b for a, b in itertools.pairwise(targets))
    assert changes == 2  # up once, down once: no flapping


def test_a_run_with_a_width_trains_that_many_and_leaves_the_rest_without_a_role():
    roles = assign_roles(Roles(), list("abcdefg"), standby_target=2, max_active=3)
    assert roles.active == ("a", "d", "e") and roles.standby == ("b", "c")
    assert set("fg").isdisjoint(roles.active + roles.standby)
    # a lost agent is replaced by a standby, and a spare worker refills the pool
    after = assign_roles(roles, list("bcdefg"), 2, max_active=3)
    assert len(after.active) == 3 and "a" not in after.active and len(after.standby) == 2
    # without a width every worker trains or stands by, as before
    assert len(assign_roles(Roles(), list("abcdefg"), 2).active) == 5


def test_the_demand_counts_a_runs_own_tasks_as_its_width_and_the_rest_as_other_work():
    import types

    from cluster_app.scaling.plugin import ScalingPlugin

    def prefix(seconds=-1.0, **states):
        return types.SimpleNamespace(states=states, duration_average=seconds)

    plugin = ScalingPlugin(SPEC)
    plugin.scheduler = types.SimpleNamespace(  # type: ignore[assignment]
        plugins={},
        task_prefixes={
            "agent-round-run": prefix(processing=3, memory=9),  # a run's rounds (ids "run-...")
            "agent-round-myrun": prefix(**{"no-worker": 1}),  # a run with its own id
            "agent-warm-run": prefix(processing=1),  # its standby's warm-up: not other work
            "agent-eval-run": prefix(queued=1),
            "agent-serve": prefix(0.1, processing=2, queued=3),  # serving batches of 0.1 s
            "agent-evaluate": prefix(**{"no-worker": 2}),  # never finished yet: 0.5 s each
            "sleep": prefix(processing=50),  # not agent work
        },
    )
    demand = plugin.demand()
    assert demand.run_width == 4 and demand.standby == 0
    assert demand.other_seconds == pytest.approx(5 * 0.1 + 2 * 0.5)
    assert plugin.adaptive_target() == 4 + 1  # 1.5 s of other work: one worker

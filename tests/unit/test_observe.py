"""The monitor's state, views and Prometheus series, without a cluster."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest

from cluster_app.observe import events, prometheus
from cluster_app.observe.monitor import PLACEMENT_PLUGIN, FleetMonitor
from cluster_app.observe.table import AgentTable, Histogram
from cluster_app.placement.plugin import PLUGIN_NAME


def _round(run="r1", r=0, workers=("a", "b"), standby=(), **kw):
    return {
        "run": run,
        "round": r,
        "version": r + 1,
        "loss": 1.0 / (r + 1),
        "seconds": 2.0,
        "push_bytes": 100,
        "pull_bytes": 50,
        "dense_bytes": 400,
        "rejected": 0,
        "time": 1000.0 + r,
        "agents": [{"worker": w, "steps": 10, "loss": 0.5, "pull_seconds": 0.02} for w in workers],
        "standby": list(standby),
        **kw,
    }


def test_the_placement_plugin_name_is_the_one_the_monitor_looks_up():
    assert PLACEMENT_PLUGIN == PLUGIN_NAME


def test_agent_table_rows_roles_and_removal_keep_columns_dense():
    t = AgentTable(capacity=2)
    t.set_round("r1", 3, [{"worker": w, "steps": 5, "loss": 0.1} for w in "abc"], ["d"], 1.0)
    assert len(t) == 4 and t.counts() == {"idle": 0, "active": 3, "standby": 1}
    t.set_round("r1", 4, [{"worker": "a", "steps": 5, "loss": 0.2}], ["b"], 2.0)
    # who held a role in the run and has none now is idle
    assert t.counts() == {"idle": 2, "active": 1, "standby": 1}
    assert t.step[t.index["a"]] == 10 and t.version[t.index["a"]] == 4
    t.remove("a")  # the last row moves into the hole
    assert sorted(t.addrs) == ["b", "c", "d"] and all(t.addrs[i] == a for a, i in t.index.items())
    assert t.role[t.index["b"]] == 2
    t.end_run("r1")
    assert t.counts()["idle"] == 3


def test_agent_table_top_puts_active_first_then_the_best_score():
    t = AgentTable()
    t.set_round("r", 1, [{"worker": w} for w in ("a1", "a2")], ["s1"], 0.0)
    t.row("i1")
    score = np.full(len(t), np.nan)
    score[t.index["a1"]], score[t.index["a2"]] = 0.2, 0.9
    order = [t.addrs[i] for i in t.top(10, score)]
    assert order == ["a2", "a1", "s1", "i1"]
    assert [t.addrs[i] for i in t.top(2, score)] == ["a2", "a1"]  # partial sort


def test_histogram_exports_cumulative_buckets_and_quantiles():
    h = Histogram([0.1, 1.0])
    for x in (0.05, 0.5, 0.5, 5.0, float("nan"), None):
        h.observe(x)
    assert h.cumulative() == [("0.1", 1.0), ("1", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.sum == pytest.approx(6.05)
    assert h.quantile(0.5) == 1.0 and h.quantile(0.99) is None  # beyond the last bound


def test_the_monitor_keeps_runs_sync_serving_and_refs_from_events():
    m = FleetMonitor()
    for r in range(3):
        m.log_event(events.ROUND, _round(r=r))
    m.log_event(events.RUN, {"run": "r1", "phase": "running", "goodput": 0.9, "standby_target": 2})
    m.log_event(events.CHECKPOINT, {"run": "r1", "round": 2, "time": 1002.0})
    m.log_event(events.PUSH, {"worker": "a", "seconds": 0.03, "error": None})
    m.log_event(events.PUSH, {"worker": "b", "seconds": None, "error": "OSError()"})
    m.log_event(
        events.SERVING, {"name": "gw", "split": "s", "arms": [{"ref": "prod", "p99_ms": 40}]}
    )
    m.log_event(events.REF, {"kind": "branch", "name": "prod", "commit": "c" * 64, "time": 5.0})
    m.log_event("someone-else", {"x": 1})  # other topics are ignored
    v = m.runs["r1"]
    assert (v.round, v.version, v.rounds, v.active, v.standby) == (2, 3, 3, 2, 0)
    assert [p[0] for p in v.curve] == [0, 1, 2] and v.checkpoint_round == 2
    assert m.sync["push_bytes"] == 300 and m.compression_ratio() == pytest.approx(4.0)
    assert m.sync["pushes"] == 2 and m.sync["push_errors"] == 1
    snap = m.snapshot()  # no scheduler: placement is off, everything else is there
    json.dumps(snap, allow_nan=False)
    assert snap["placement"] == {"enabled": False}
    assert snap["counts"] == {"idle": 0, "active": 2, "standby": 0, "total": 2}
    assert snap["serving"][0]["name"] == "gw" and snap["refs"][0]["name"] == "prod"
    assert snap["runs"][0]["checkpoint"]["round"] == 2
    m.log_event(events.RUN, {"run": "r1", "phase": "finished"})
    assert m.agents.counts()["active"] == 0


def test_ended_runs_are_forgotten_beyond_a_bound_running_ones_never():
    m = FleetMonitor()
    m.log_event(events.ROUND, _round(run="live"))
    for k in range(30):
        m.log_event(events.RUN, {"run": f"old{k}", "phase": "finished"})
    assert "live" in m.runs and len(m.runs) <= 22


def _series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_prometheus_series_appear_with_the_monitor_and_leave_with_it():
    m = FleetMonitor()
    m.scheduler = types.SimpleNamespace(plugins={})  # placement off
    prometheus.attach(m)
    try:
        text = generate_latest(REGISTRY).decode()
        # every family is there before any event (series never go missing)
        families = (
            "cluster_app_agents",
            "cluster_app_sync_push_bytes_total",
            "cluster_app_round_seconds_bucket",
            "cluster_app_placement_decisions_total",
        )
        for name in families:
            assert name in text, name
        m.log_event(events.ROUND, _round(r=0, standby=("s",)))
        m.log_event(
            events.RUN, {"run": "r1", "phase": "running", "goodput": 0.5, "standby_target": 2}
        )
        text = generate_latest(REGISTRY).decode()
        assert _series(text, "cluster_app_agents{")['cluster_app_agents{role="standby"}'] == 1
        assert _series(text, "cluster_app_run_goodput")['cluster_app_run_goodput{run="r1"}'] == 0.5
        assert (
            _series(text, "cluster_app_run_standby_target")[
                'cluster_app_run_standby_target{run="r1"}'
            ]
            == 2
        )
        assert (
            _series(text, "cluster_app_round_seconds_count")["cluster_app_round_seconds_count"] == 1
        )
    finally:
        prometheus.detach(m)
    assert "cluster_app_agents" not in generate_latest(REGISTRY).decode()

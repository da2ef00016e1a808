"""The ``/cluster-app`` page on the scheduler's own Dask dashboard (Bokeh, Dask's look).

Importing this module registers the page with the dashboard (``distributed.dashboard.scheduler
.applications``), which a scheduler reads when its dashboard starts; the monitor then lists it
in the "More" menu. So the module must be imported in the scheduler's process before the
scheduler starts: :class:`~cluster_app.cluster.AgentCluster` does that for its local cluster,
and ``dask scheduler --preload cluster_app.observe.preload`` (or ``cluster-app up``) for any
other. Without it, the monitor, its JSON routes and its Prometheus series still work.

One refresh (every :data:`REFRESH_MS`) reads the monitor's state: a bounded number of agent rows
picked with a partial sort over the columnar table, the runs' recent loss points, a few
aggregates. Its cost does not grow with a Python loop over the fleet; ``benchmarks/dashboard.py``
measures it at 2,000 simulated workers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataTable, Div, NumberFormatter, TableColumn
from bokeh.palettes import Category10
from bokeh.plotting import figure
from distributed.dashboard.components import DashboardComponent, add_periodic_callback
from distributed.dashboard.components.scheduler import BOKEH_THEME, env
from distributed.dashboard.scheduler import applications, template_variables
from distributed.dashboard.utils import update
from distributed.utils import log_errors

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

    from cluster_app.observe.monitor import FleetMonitor

__all__ = ["PAGE", "FleetPage", "add_to_menu", "fleet_doc"]

PAGE = "/cluster-app"
REFRESH_MS = 1000
ROWS = 50  # agents shown (the best first); the counts above cover the whole fleet
CURVE_POINTS = 500
RUNS_PLOTTED = 5

_AGENT_COLS = ("worker", "role", "run", "version", "step", "loss", "load", "latency_ms", "score")
_RUN_COLS = (
    "run", "phase", "round", "version", "loss", "heldout_loss", "goodput", "standby",
    "standby_target", "checkpoint_round", "checkpoint_age_s",
)  # fmt: skip
_ARM_COLS = ("gateway", "split", "state", "ref", "weight", "requests", "p50_ms", "p99_ms", "errors")
_REF_COLS = ("kind", "name", "commit", "age_s")


def _table(source: ColumnDataSource, names: tuple[str, ...], height: int) -> DataTable:
    fmt = NumberFormatter(format="0,0.[000]")
    cols = [TableColumn(field=n, title=n.replace("_", " "), formatter=fmt) for n in names]
    for c in cols:
        if c.field in ("worker", "role", "run", "phase", "gateway", "split", "state", "ref"):
            c.formatter = TableColumn().formatter  # plain text
        if c.field in ("kind", "name", "commit"):
            c.formatter = TableColumn().formatter
    return DataTable(
        source=source, columns=cols, height=height, index_position=None, sizing_mode="stretch_width"
    )


def _figure(title: str, height: int, x_axis_type: Any = "linear", **kw: Any) -> Any:
    return figure(
        title=title,
        height=height,
        x_axis_type=x_axis_type,
        sizing_mode="stretch_width",
        tools="pan,wheel_zoom,reset",
        **kw,
    )


def _empty(names: tuple[str, ...]) -> dict[str, Any]:
    return {n: [] for n in names}


class FleetPage(DashboardComponent):
    """Agents, placement, sync, runs, checkpoints, versions and serving, live."""

    def __init__(self, scheduler: Scheduler, rows: int = ROWS) -> None:
        self.scheduler, self.rows = scheduler, rows
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.agents = ColumnDataSource(_empty(_AGENT_COLS))
        self.runs = ColumnDataSource(_empty(_RUN_COLS))
        self.arms = ColumnDataSource(_empty(_ARM_COLS))
        self.refs = ColumnDataSource(_empty(_REF_COLS))
        self.curves = ColumnDataSource({"xs": [], "ys": [], "run": [], "color": []})
        self.heldout = ColumnDataSource({"x": [], "y": [], "run": []})
        self.queue = ColumnDataSource({"priority": [], "depth": []})
        self.sync = ColumnDataSource({"t": [], "push_kb": [], "ratio": []})
        self.serving = ColumnDataSource({"t": [], "p99_ms": []})
        self._curve_key: tuple = ()

        loss = _figure("Loss (training: lines; held-out: dots)", 260, x_axis_label="round")
        loss.multi_line("xs", "ys", color="color", source=self.curves, line_width=2)
        loss.scatter("x", "y", source=self.heldout, size=6, color="black")
        queue = _figure("Placement queue by priority", 220, x_axis_label="priority")
        queue.vbar(x="priority", top="depth", width=0.8, source=self.queue, color=Category10[3][0])
        sync = _figure(
            "Sync: pushed KB per round (bars), compression ratio (line)", 220, "datetime"
        )
        sync.vbar(x="t", top="push_kb", width=400, source=self.sync, color=Category10[3][1])
        sync.line(x="t", y="ratio", source=self.sync, color=Category10[3][2], line_width=2)
        serving = _figure("Serving p99 (ms) per arm report", 220, "datetime")
        serving.scatter(x="t", y="p99_ms", source=self.serving, size=4)
        self.root = column(
            Div(text="<h2>cluster-app: the fleet</h2>"),
            self.summary,
            Div(text="<b>Agents</b> (active, then standby, then idle; best score first)"),
            _table(self.agents, _AGENT_COLS, 300),
            row(loss, queue, sizing_mode="stretch_width"),
            row(sync, serving, sizing_mode="stretch_width"),
            Div(text="<b>Runs and checkpoints</b>"),
            _table(self.runs, _RUN_COLS, 160),
            Div(text="<b>Serving: the live A/B splits</b>"),
            _table(self.arms, _ARM_COLS, 160),
            Div(text="<b>Branches and tags</b> (as they move)"),
            _table(self.refs, _REF_COLS, 160),
            sizing_mode="stretch_width",
        )

    def _monitor(self) -> FleetMonitor | None:
        from cluster_app.observe.monitor import PLUGIN_NAME

        return self.scheduler.plugins.get(PLUGIN_NAME)  # type: ignore[return-value]

    @log_errors
    def update(self) -> None:
        m = self._monitor()
        if m is None:
            self.summary.text = "<i>The cluster-app monitor is not running on this scheduler.</i>"
            return
        now = time.time()
        rows = m.agent_rows(self.rows)
        _set(self.agents, {c: [r[c] for r in rows] for c in _AGENT_COLS})
        self._update_runs(m, now)
        placement = m.placement()
        queue = placement.get("queue_by_priority", [])
        _set(self.queue, {"priority": [p for p, _ in queue], "depth": [n for _, n in queue]})
        series = list(m.sync_series)[-200:]
        _set(
            self.sync,
            {
                "t": [t * 1e3 for t, *_ in series],
                "push_kb": [p / 1e3 for _, p, _, _ in series],
                "ratio": [d / p if p else None for _, p, d, _ in series],
            },
        )
        self._update_serving(m, now)
        self.summary.text = _summary(m, placement)

    def _update_runs(self, m: FleetMonitor, now: float) -> None:
        views = sorted(m.runs.values(), key=lambda v: (not v.running, -(v.last_round or 0)))
        _set(self.runs, {c: [_run_cell(v.as_dict(now), c) for v in views] for c in _RUN_COLS})
        plotted = views[:RUNS_PLOTTED]
        key = tuple((v.run, v.rounds) for v in plotted)
        if key == self._curve_key:
            return  # no new round: the curves are unchanged
        self._curve_key = key
        xs, ys, hx, hy, hrun = [], [], [], [], []
        for v in plotted:
            pts = list(v.curve)[-CURVE_POINTS:]
            xs.append([p[0] for p in pts])
            ys.append([p[1] for p in pts])
            held = [p for p in pts if p[2] is not None]
            hx += [p[0] for p in held]
            hy += [p[2] for p in held]
            hrun += [v.run] * len(held)
        colors = [Category10[10][i % 10] for i in range(len(plotted))]
        _set(self.curves, {"xs": xs, "ys": ys, "run": [v.run for v in plotted], "color": colors})
        _set(self.heldout, {"x": hx, "y": hy, "run": hrun})

    def _update_serving(self, m: FleetMonitor, now: float) -> None:
        arms: dict[str, list] = _empty(_ARM_COLS)
        for report in m.serving.values():
            for a in report.get("arms") or []:
                for c, value in (
                    ("gateway", report.get("name")),
                    ("split", report.get("split")),
                    ("state", report.get("state")),
                    *((c, a.get(c)) for c in _ARM_COLS[3:]),
                ):
                    arms[c].append(value)
        _set(self.arms, arms)
        series = list(m.serving_series)[-300:]
        _set(self.serving, {"t": [t * 1e3 for t, *_ in series], "p99_ms": [p for *_, p in series]})
        refs = sorted(m.refs.values(), key=lambda r: -(r.get("time") or 0))[:20]
        _set(
            self.refs,
            {
                "kind": [r.get("kind") for r in refs],
                "name": [r.get("name") for r in refs],
                "commit": [str(r.get("commit") or "")[:12] for r in refs],
                "age_s": [now - r["time"] if r.get("time") else None for r in refs],
            },
        )


def _set(source: ColumnDataSource, data: dict[str, list]) -> None:
    """Replace a source's columns, sending nothing when they did not change (Dask's helper:
    it patches ``source.data`` in place, which the DataTable redraws)."""
    update(source, data)


def _run_cell(d: dict[str, Any], c: str) -> Any:
    if c.startswith("checkpoint_"):
        return d["checkpoint"]["round" if c == "checkpoint_round" else "age_s"]
    return d[c]


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _summary(m: FleetMonitor, placement: dict[str, Any]) -> str:
    c = m.agents.counts()
    running = [v for v in m.runs.values() if v.running]
    ratio = m.compression_ratio()
    parts = [
        f"<b>{len(m.agents)}</b> agents: {c['active']} active, {c['standby']} standby, "
        f"{c['idle']} idle",
        f"<b>{len(running)}</b> running runs",
        f"placement: {_fmt(placement.get('decisions_per_s'))} decisions/s, "
        f"{placement.get('queue_depth', 0)} queued",
        f"sync: {m.sync['push_bytes'] / 1e6:.2f} MB pushed, compression {_fmt(ratio)}x, "
        f"push p50 {_fmt(m.push_seconds.quantile(0.5))} s, "
        f"pull p50 {_fmt(m.pull_seconds.quantile(0.5))} s, "
        f"{m.sync['rejected']} rejected",
    ]
    ages = [time.time() - v.checkpoint_time for v in running if v.checkpoint_time]
    if ages:
        parts.append(f"latest checkpoint {min(ages):.0f} s old")
    return " &nbsp;|&nbsp; ".join(parts)


@log_errors
def fleet_doc(scheduler: Scheduler, extra: dict, doc: Any) -> None:
    page = FleetPage(scheduler)
    page.update()
    add_periodic_callback(doc, page, REFRESH_MS)
    doc.title = "Dask: cluster-app"
    doc.add_root(page.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def add_to_menu(scheduler: Scheduler) -> None:
    """List the page in the scheduler dashboard's "More" menu (the menu is built per
    scheduler; the page must be registered, i.e. this module imported, before it started)."""
    if PAGE not in applications or getattr(scheduler, "http_application", None) is None:
        return
    plots = template_variables(scheduler)["plots"]
    if not any(p["url"] == PAGE.strip("/") for p in plots):
        plots.append({"url": PAGE.strip("/"), "name": "cluster-app fleet"})
        plots.sort(key=lambda p: p["name"].lower())


applications.setdefault(PAGE, fleet_doc)

"""Runs as the CLI shows them: one-line summaries, the last rounds, and following a run.

Everything is read from the run's record in the store (``run.json``, ``control.json``,
``status.json``, ``history/``), so it needs no cluster.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from cluster_app.errors import ClusterAppError, RunError

if TYPE_CHECKING:
    from cluster_app.runs.record import RunRecord

__all__ = ["end_line", "follow", "history", "n_rounds", "round_line", "run_id_of", "summary"]

DONE = ("finished", "stopped", "failed")  # cluster_app.runs.record.DONE, without its imports


def run_id_of(record: RunRecord) -> str:
    return record.spec()["run_id"]


def _history_names(record: RunRecord) -> list[str]:
    try:
        names = record.fs.ls(f"{record.root}/history", detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.endswith(".tmp"))


def n_rounds(record: RunRecord) -> int:
    """How many rounds the run has recorded."""
    return len(_history_names(record))


def history(record: RunRecord, last: int | None = None, skip: int = 0) -> list[dict[str, Any]]:
    """The run's recorded rounds, oldest first: those after the first ``skip``, or only the
    ``last`` ones. Each gains ``kept``: the share of its launched shards whose work was kept
    (the round's goodput; a round that lost one of four agents keeps 3/4)."""
    names = _history_names(record)[skip:]
    if last is not None:
        names = names[-last:] if last else []
    out = []
    for name in names:
        try:
            h = json.loads(record.fs.cat_file(name))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        launched = h.get("launched") or 0
        h["kept"] = h.get("agents", 0) / launched if launched else None
        out.append(h)
    return out


def _num(x: Any, fmt: str = ".4f") -> str:
    if isinstance(x, (int, float)) and not (isinstance(x, float) and not math.isfinite(x)):
        return format(x, fmt)
    return "-"


def summary(record: RunRecord) -> dict[str, Any]:
    """One run in a line: id, phase, control, rounds done of planned, version, loss, goodput."""
    spec = record.spec()
    status = record.status()
    names = _history_names(record)
    last = history(record, last=1) if names else []
    goodput = (status.get("goodput") or {}).get("goodput")
    return {
        "run_id": spec["run_id"],
        "phase": status.get("phase", "pending"),
        "control": record.control(),
        "rounds_done": (last[0]["round"] + 1) if last else 0,
        "rounds": spec.get("rounds"),
        "version": status.get("version"),
        "model": (spec.get("agent") or {}).get("model"),
        "loss": last[0].get("loss") if last else None,
        "goodput": goodput,
        "updated": status.get("updated"),
        "error": status.get("error"),
    }


def round_line(h: dict[str, Any]) -> str:
    """One recorded round as a line of text."""
    kept = h.get("kept")
    line = (
        f"round {h.get('round', '?'):>5}  version {h.get('version', '?'):>5}  "
        f"loss {_num(h.get('loss'))}  agents {h.get('agents', '?')}/{h.get('launched', '?')}  "
        f"goodput {_num(kept, '.0%') if kept is not None else '-'}  "
        f"{_num(h.get('seconds'), '.1f')}s"
    )
    if h.get("dropped"):
        line += f"  dropped {len(h['dropped'])}"
    if h.get("takeovers"):
        line += f"  takeovers {len(h['takeovers'])}"
    return line


def end_line(run_id: str, status: dict[str, Any], rounds_done: int) -> str:
    ev = status.get("eval_end") or {}
    g = (status.get("goodput") or {}).get("goodput")
    text = f"run {run_id} {status.get('phase')}: {rounds_done} rounds"
    text += f", version {status.get('version')}"
    if ev.get("loss") is not None:
        text += f", held-out loss {_num(ev['loss'])}"
        if ev.get("baseline_loss") is not None:
            text += f" (baseline {_num(ev['baseline_loss'])})"
    if g is not None:
        text += f", goodput {_num(g, '.1%')}"
    return text


def follow(
    record: RunRecord,
    *,
    poll: float = 0.5,
    timeout: float | None = None,
    alive: Callable[[], bool] | None = None,
    alive_every: float = 5.0,
    skip: int = 0,
    echo: Callable[[str], Any] = click.echo,
) -> dict[str, Any]:
    """Print the run's rounds as they are recorded until it finishes, stops or fails; returns
    its final status. A failed run raises :class:`RunError`; ``alive()`` (is the run's loop on
    the cluster?) is asked every ``alive_every`` seconds, and a loop that has gone while the
    run has not ended raises :class:`ClusterAppError`, as does ``timeout``. The first
    ``skip`` recorded rounds are not printed."""
    run_id = run_id_of(record)
    seen = skip
    phase = None
    t0 = last_alive = time.monotonic()
    while True:
        gone = False
        now = time.monotonic()
        if alive is not None and now - last_alive >= alive_every:
            last_alive = now
            gone = not alive()  # asked before the status: a loop that ends writes it first
        status = record.status()
        new = history(record, skip=seen)
        for h in new:
            echo(round_line(h))
        seen += len(new)
        if status.get("phase") != phase:
            phase = status.get("phase")
            if phase == "paused":
                echo(f"run {run_id} paused (cluster-app runs resume {run_id})")
        if phase in DONE:
            echo(end_line(run_id, status, seen))
            if phase == "failed":
                raise RunError(f"run {run_id} failed: {status.get('error')}")
            return status
        if gone:
            raise ClusterAppError(
                f"run {run_id} is {phase} but its loop is not on the cluster; "
                f"`cluster-app runs resume {run_id} --scheduler ADDRESS` restarts it"
            )
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise ClusterAppError(f"run {run_id} still {phase} after {timeout:g}s")
        time.sleep(poll)

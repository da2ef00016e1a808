"""The benchmark contract, shared by every script in this folder.

``python benchmarks/<name>.py`` runs the full measurement, ``--quick`` a small version (under a
minute, run by the tests so scripts cannot rot), ``--out PATH`` sets the JSON path (default
``benchmarks/results/<name>.json``). The JSON holds ``benchmark``, ``quick``, the parameters,
the raw per-repeat figures and a flat ``headline``; a PNG plot is written beside it and a short
table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def parse_args(name: str, doc: str, extra=None) -> argparse.Namespace:
    """``--quick`` and ``--out``; ``extra(parser)`` adds a script's own options."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=doc)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true", help="small version (< 1 minute)")
    parser.add_argument(
        "--out",
        default=os.path.join(RESULTS, f"{name}.json"),
        help="where the JSON goes; the PNG is written beside it",
    )
    return parser.parse_args()


def timed_ms(fn, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn``, one figure per call."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def percentile(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def write_result(out: str, name: str, quick: bool, params: dict, raw: dict, headline: dict) -> str:
    """Write the JSON and return the PNG path to draw into (same stem)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    payload = {
        "benchmark": name,
        "quick": quick,
        "params": params,
        "raw": raw,
        "headline": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in headline.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(out, "w") as f:
        json.dump(payload, f, indent=2)
    return os.path.splitext(out)[0] + ".png"


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*[f"{x:.3g}" if isinstance(x, float) else str(x) for x in row])
    Console(width=130).print(table)

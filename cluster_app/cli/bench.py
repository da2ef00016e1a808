"""``cluster-app bench``: run the benchmarks in ``benchmarks/`` with this environment's Python.

Each ``benchmarks/<name>.py`` (``common.py`` aside) is one benchmark; the ones that take the
shared ``--quick`` / ``--out`` options (``benchmarks/common.py``: ``parse_args``) get them
passed through. Exit codes: 0 every benchmark ran; 1 one failed (the rest are not run), or
there is no benchmarks folder; 2 an unknown name or no name at all.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from cluster_app.cli._common import ERROR

__all__ = ["Benchmark", "bench", "find_benchmarks"]

NOT_BENCHMARKS = {"common", "__init__"}


class Benchmark:
    """One script: its name, path, first docstring line and whether it takes ``--quick``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        source = path.read_text()
        try:
            doc = ast.get_docstring(ast.parse(source)) or ""
        except SyntaxError:
            doc = ""
        self.summary = doc.strip().splitlines()[0] if doc.strip() else ""
        self.quick = "--quick" in source or "parse_args(" in source
        self.takes_out = "--out" in source or "parse_args(" in source

    def command(self, quick: bool, out_dir: str | None) -> list[str]:
        cmd = [sys.executable, str(self.path)]
        if quick and self.quick:
            cmd.append("--quick")
        if out_dir is not None and self.takes_out:
            cmd += ["--out", os.path.join(out_dir, f"{self.name}.json")]
        return cmd


def default_dir() -> Path:
    """``benchmarks/`` beside the package (a source checkout or an editable install)."""
    import cluster_app

    return Path(cluster_app.__file__).resolve().parent.parent / "benchmarks"


def find_benchmarks(directory: Path) -> dict[str, Benchmark]:
    """Every benchmark script in ``directory``, by name (sorted)."""
    return {
        p.stem: Benchmark(p)
        for p in sorted(directory.glob("*.py"))
        if p.stem not in NOT_BENCHMARKS and not p.stem.startswith("_")
    }


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and exit.")
@click.option("--all", "run_all", is_flag=True, help="Run every benchmark (hours, not minutes).")
@click.option(
    "--quick", is_flag=True, help="The small version (under a minute each) where supported."
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write each result (JSON + PNG) here (default: benchmarks/results/).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The benchmarks folder (default: the checkout's benchmarks/).",
)
def bench(names, list_only, run_all, quick, out_dir, directory) -> None:
    """Run the benchmarks NAME... (see --list), one after another, with this environment's
    Python; --quick runs their small versions. Stops at the first that fails (exit 1)."""
    directory = (directory or default_dir()).resolve()
    if not directory.is_dir():
        click.echo(f"error: no benchmarks folder at {directory} (pass --dir)", err=True)
        sys.exit(ERROR)
    found = find_benchmarks(directory)
    if list_only:
        width = max((len(n) for n in found), default=0)
        for name, b in found.items():
            flag = "" if b.quick else "  (no --quick)"
            click.echo(f"{name:<{width}}  {b.summary}{flag}")
        return
    if run_all:
        if names:
            raise click.UsageError("give benchmark names or --all, not both")
        names = tuple(found)
    if not names:
        raise click.UsageError(f"name the benchmarks to run (or --all); known: {', '.join(found)}")
    unknown = [n for n in names if n not in found]
    if unknown:
        raise click.BadParameter(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(found)}",
            param_hint="NAME",
        )
    if out_dir is not None:
        out_dir = os.path.abspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
    for name in dict.fromkeys(names):  # each once, in the order given
        b = found[name]
        if quick and not b.quick:
            click.echo(f"{name}: no --quick version; running the full benchmark", err=True)
        cmd = b.command(quick, out_dir)
        click.echo(f"== {name}: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=directory.parent)  # where `make bench` runs them
        took = time.perf_counter() - t0
        if rc != 0:
            click.echo(f"error: benchmark {name} failed (exit {rc}) after {took:.0f}s", err=True)
            sys.exit(ERROR)
        click.echo(f"== {name}: done in {took:.0f}s")

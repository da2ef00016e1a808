"""``cluster-app bench``: listing, running the named benchmarks, ``--quick`` and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster_app.cli import main
from cluster_app.cli.bench import default_dir, find_benchmarks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args, env=None):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False, env=env)


def test_lists_the_repository_benchmarks():
    assert default_dir() == Path(ROOT, "benchmarks")
    r = cli("--list")
    assert r.exit_code == 0, r.output
    names = [line.split()[0] for line in r.output.splitlines()]
    for name in (
        "hybrid",
        "placement",
        "placement_scale",
        "recovery",
        "registry",
        "serving",
        "sync",
    ):
        assert name in names
    assert "common" not in names
    sync = next(line for line in r.output.splitlines() if line.startswith("sync "))
    assert "Parameter-sync cost" in sync and "no --quick" not in sync
    assert all(b.quick for b in find_benchmarks(default_dir()).values())


@pytest.fixture
def bench_dir(tmp_path):
    """Three fake benchmarks that log their arguments: one with the shared options, one
    without them, one that fails."""
    d = tmp_path / "benchmarks"
    d.mkdir()
    log = tmp_path / "log.jsonl"
    body = (
        "import json, os, sys\n"
        'open(os.environ["BENCH_LOG"], "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
    )
    (d / "alpha.py").write_text(
        '"""Alpha: the shared options."""\nfrom common import parse_args\nparse_args()\n' + body
    )
    (d / "common.py").write_text('"""Not a benchmark."""\ndef parse_args(): pass\n')
    (d / "beta.py").write_text('"""Beta: takes no options."""\n' + body)
    (d / "broken.py").write_text('"""Fails."""\nimport sys\nsys.exit(3)\n')
    return d, log


def _logged(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_runs_the_named_benchmarks_in_order(bench_dir, tmp_path):
    d, log = bench_dir
    env = {"BENCH_LOG": str(log)}
    r = cli("--dir", str(d), "--list")
    assert r.exit_code == 0
    assert [line.split()[0] for line in r.output.splitlines()] == ["alpha", "beta", "broken"]
    assert ["(no --quick)" in line for line in r.output.splitlines()] == [False, True, True]

    out = tmp_path / "results"
    r = cli("--dir", str(d), "--quick", "--out-dir", str(out), "beta", "alpha", "beta", env=env)
    assert r.exit_code == 0, r.output
    # each once, in the order given; --quick and --out only where the script takes them
    assert _logged(log) == [[], ["--quick", "--out", str(out / "alpha.json")]]
    assert "beta: no --quick version" in r.output and "== alpha: done in" in r.output


def test_bad_names_and_failures(bench_dir):
    d, log = bench_dir
    env = {"BENCH_LOG": str(log)}
    r = cli("--dir", str(d), "alpha", "nope", env=env)
    assert r.exit_code == 2
    assert "unknown benchmark(s) nope; known: alpha, beta, broken" in r.output
    assert _logged(log) == []  # nothing ran
    r = cli("--dir", str(d))
    assert r.exit_code == 2 and "name the benchmarks to run (or --all)" in r.output
    assert cli("--dir", str(d), "--all", "alpha").exit_code == 2
    r = cli("--dir", str(d), "alpha", "broken", "beta", env=env)
    assert r.exit_code == 1 and "benchmark broken failed (exit 3)" in r.output
    assert _logged(log) == [[]]  # alpha ran; beta, after the failure, did not
    r = cli("--dir", str(d / "missing"), "--list")
    assert r.exit_code == 1 and "no benchmarks folder" in r.output

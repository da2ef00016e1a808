"""The docs site builds offline in strict mode with no warning, and its generated pages hold what
they are generated from (``mkdocs.yml``, ``docs/hooks/``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_app import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert not re.search(r"^\s*(WARNING|ERROR)\b", log, re.MULTILINE), log
    return out


def test_the_site_builds_strict_with_every_page(site: Path):
    for page in ("quickstart", "architecture", "configuration", "api/cluster", "runbook"):
        assert (site / page / "index.html").exists(), page
    api = (site / "api" / "cluster" / "index.html").read_text()
    assert "AgentCluster" in api and "RunHandle" in api and ":class:" not in api


def test_the_configuration_reference_lists_every_key_with_its_default(site: Path):
    page = (site / "configuration" / "index.html").read_text()
    for key in config.SCHEMA:
        group, name = key.rpartition(".")[::2]
        assert f"cluster-app.{group}" in page and f"<code>{name}</code>" in page, key
    assert "<code>1.5GiB</code>" in page  # cluster.memory-limit's packaged default


def test_the_benchmark_plots_and_figures_come_from_the_results(site: Path):
    for png in (ROOT / "benchmarks" / "results").glob("*.png"):
        assert (site / "assets" / "benchmarks" / png.name).read_bytes() == png.read_bytes()
    page = (site / "benchmarks" / "index.html").read_text()
    assert "{{" not in page and "bench-table" not in page
    assert 'src="../assets/benchmarks/serving.png"' in page
    placement = json.loads((ROOT / "benchmarks" / "results" / "placement.json").read_text())
    hp = placement["headline"]["hp_p95_speedup_vs_dask"]
    assert f"{hp:.2f}x" in page  # the figure in the page is the one in the results

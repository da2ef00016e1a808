"""Our Prometheus rules and series, checked by a real Prometheus (Debian's ``prometheus``
package: ``prometheus`` and ``promtool``, installed by ``.ci/run``)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import threading

import httpx
import pytest
import yaml
from distributed.utils_test import poll_for

from cluster_app import AgentCluster, AgentSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "cluster-app-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "cluster-app-rules.test.yml"
ALERTS = {
    "ClusterAppTrainingStalled",
    "ClusterAppCheckpointStale",
    "ClusterAppStandbyBelowTarget",
    "ClusterAppSyncRejections",
    "ClusterAppServingBudgetBurnFast",
    "ClusterAppServingBudgetBurnSlow",
    "ClusterAppCanaryRolledBack",
    "ClusterAppGoodputDrop",
}


def need(binary: str) -> str:
    """The binary's path; a test without it fails in CI (which installs it) and is skipped
    elsewhere."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CLUSTER_APP_REQUIRE_SERVICES"):
            pytest.fail(f"{binary} is not installed (.ci/run installs it)")
        pytest.skip(f"{binary} is not installed")
    return path


def _rules() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def test_promtool_checks_the_rules_file():
    out = subprocess.run(
        [need("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in _rules() for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    # every alert has a runbook entry that exists
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for g in _rules():
        for r in g["rules"]:
            if "alert" in r:
                anchor = r["annotations"]["runbook_url"].split("#")[1]
                assert f"## {anchor}" in runbook.replace("`", ""), anchor


def test_every_alert_fires_on_a_bad_series_and_stays_quiet_on_a_healthy_one():
    out = subprocess.run(
        [need("promtool"), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            if t["exp_alerts"]:
                tested.add(t["alertname"])
                # a healthy series beside each bad one stays quiet: the expected alerts do
                # not name every series of the case
                firing = {tuple(sorted(a["exp_labels"].items())) for a in t["exp_alerts"]}
                assert len(firing) < len({s["series"].split("{")[1] for s in case["input_series"]})
    assert tested == ALERTS


def test_the_k8s_prometheus_rule_carries_the_same_rules():
    doc = yaml.safe_load((ROOT / "k8s" / "prometheus-rule.yaml").read_text())
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"]["groups"] == _rules(), "run: make k8s/prometheus-rule.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prometheus(tmp_path: pathlib.Path, target: str):
    """A Prometheus on loopback scraping ``target`` every second, with our rules."""
    port = _free_port()
    shutil.copy(RULES, tmp_path / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": "dask-scheduler", "static_configs": [{"targets": [target]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    args = [
        need("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (
        open(tmp_path / "prometheus.log", "w") as log,
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log) as proc,
    ):
        try:
            url = f"http://127.0.0.1:{port}"
            poll_for(lambda: _ready(url), timeout=60)
            yield url
        finally:
            proc.terminate()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _query(url: str, promql: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


@pytest.mark.slow
def test_a_real_prometheus_scrapes_our_series_from_the_scheduler_during_training(tmp_path):
    spec = AgentSpec.from_config(model="mlp", dataset="digits")
    with AgentCluster(n_workers=2, agent=spec, store_url=str(tmp_path / "store"), quiet=True) as ac:
        target = ac.client.dashboard_link.split("//")[1].split("/")[0]
        with prometheus(tmp_path, target) as url:
            done = threading.Event()

            def train():
                try:
                    # long enough for Prometheus to see it run, whatever the machine
                    ac.train(rounds=100_000, local_steps=20, max_seconds=30, progress=False)
                finally:
                    done.set()

            worker = threading.Thread(target=train, daemon=True)
            worker.start()

            # during training: our series are in Prometheus, scraped from /metrics
            def explain():  # what Prometheus and the scheduler said, for the failure
                targets = httpx.get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
                ours = [
                    line
                    for line in httpx.get(f"http://{target}/metrics").text.splitlines()
                    if line.startswith("cluster_app_run")
                ]
                raise AssertionError(f"targets: {targets}\nscheduler: {ours[:20]}")

            poll_for(
                lambda: _query(url, "cluster_app_run_running == 1"), timeout=120, fail_func=explain
            )
            first = _query(url, "max(cluster_app_run_round)")
            poll_for(
                lambda: (
                    float(_query(url, "max(cluster_app_run_round)")[0]["value"][1])
                    > float(first[0]["value"][1])
                ),
                timeout=120,
            )
            assert not done.is_set(), "the run ended before Prometheus saw it progress"
            agents = {
                r["metric"]["role"]: float(r["value"][1]) for r in _query(url, "cluster_app_agents")
            }
            assert sum(agents.values()) == 2
            assert _query(url, "rate(cluster_app_sync_push_bytes_total[30s]) > 0")
            assert _query(url, "cluster_app_sync_push_seconds_count > 0")
            # our rules are loaded and evaluated
            groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
            assert {g["name"] for g in groups} == {g["name"] for g in _rules()}
            assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
            worker.join(300)
            assert done.is_set()

"""The k8s/ kustomizations, built by a real ``kubectl kustomize`` and checked offline: built-in
kinds against Kubernetes' schema (kubernetes-validate), DaskCluster and DaskAutoscaler against
the CRD schemas the dask-kubernetes wheel ships (jsonschema), each overlay's DaskCluster against
the builder that should have made it (cluster_app.kube), the NetworkPolicy and PodMonitor
against the labels the operator's own code gives the pods; the Dockerfile's inputs; and the
scheduler run as the DaskCluster runs it (``dask scheduler`` with its args and env, on
loopback), asked for its adaptive target the way the operator asks.

No API server can run here, so nothing is applied: what a live cluster would add (admission,
the operator reconciling, pods starting from the image) is not tested. kubectl comes with
the machine's image (.ci/run makes sure it is there); without it these tests skip, or fail
where CLUSTER_APP_REQUIRE_SERVICES is set.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import jsonschema
import jsonschema.validators
import kubernetes_validate
import pytest
import yaml

from cluster_app import kube

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30.0"
NAMESPACE = "cluster-app"
MIN_KUSTOMIZE = (4, 2)  # replacements (4.1) and components (3.7); kubectl >= 1.22
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- tools
@functools.cache
def _kubectl() -> tuple[str | None, str]:
    """kubectl's path, or None and why not."""
    path = shutil.which("kubectl")
    if path is None:
        return None, "kubectl is not installed"
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "v0")
    got = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if got < MIN_KUSTOMIZE:
        return None, f"{path} embeds kustomize {version}: k8s/ needs 4.2+ (kubectl 1.22+)"
    return path, ""


@pytest.fixture(scope="module")
def kubectl() -> str:
    path, why = _kubectl()
    if path is None:
        if os.environ.get("CLUSTER_APP_REQUIRE_SERVICES"):
            pytest.fail(f"{why} (.ci/run makes sure a recent one is there)")
        pytest.skip(why)
    return path


def build(kubectl: str, directory: pathlib.Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert not out.stderr.strip(), out.stderr  # no deprecation warnings either
    return [d for d in yaml.load_all(out.stdout, Loader=LOADER) if d]


def overlay(tmp_path: pathlib.Path, body: str, k8s: pathlib.Path = K8S) -> pathlib.Path:
    """A kustomization in ``tmp_path``; ``{k8s}`` in ``body`` is the relative path to ``k8s``
    (kustomize takes no absolute resource paths)."""
    d = tmp_path / "overlay"
    d.mkdir()
    rel = os.path.relpath(k8s, d)
    (d / "kustomization.yaml").write_text(body.replace("{k8s}", rel))
    return d


@functools.cache
def crd_validator(kind: str) -> Any:
    import dask_kubernetes

    crds = (
        pathlib.Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds"
    )
    crd = yaml.load((crds / f"{kind.lower()}.yaml").read_text(), Loader=LOADER)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate(doc: dict) -> None:
    """Built-in kinds: Kubernetes' schema, strict; the operator's kinds: its CRDs."""
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    if group == "kubernetes.dask.org":
        crd_validator(doc["kind"]).validate(doc)
    elif group == "monitoring.coreos.com":  # the Prometheus Operator's schemas are not here
        assert doc["kind"] in {"PodMonitor", "PrometheusRule"}
        assert doc["metadata"]["labels"]["release"] == "prometheus"
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = by_kind(docs)[kind]
    return doc


def namespaced(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    spec["metadata"]["namespace"] = NAMESPACE
    return spec


def worker(spec: dict) -> dict:
    (c,) = spec["spec"]["worker"]["spec"]["containers"]
    return c


def scheduler(spec: dict) -> dict:
    (c,) = spec["spec"]["scheduler"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


KINDS = {
    "DaskCluster": 1,
    "DaskAutoscaler": 1,
    "PersistentVolumeClaim": 2,
    "NetworkPolicy": 1,
    "PodMonitor": 1,
    "PrometheusRule": 1,
}


# ---------------------------------------------------------------- the kustomizations
@pytest.mark.parametrize("where", ["base", "overlays/cpu", "overlays/gpu"])
def test_every_kustomization_builds_and_validates(kubectl, where):
    docs = build(kubectl, K8S / where)
    assert {k: len(v) for k, v in by_kind(docs).items()} == KINDS
    for doc in docs:
        validate(doc)
        ns = doc["metadata"].get("namespace")
        assert ns == (None if where == "base" else NAMESPACE), doc["metadata"]
    assert "Secret" not in by_kind(docs)  # no placeholder credentials ever get applied


def test_the_base_is_the_builders_cluster_and_the_generated_rules(kubectl):
    docs = build(kubectl, K8S / "base")
    assert one(docs, "DaskCluster") == kube.cluster_spec()
    assert one(docs, "DaskAutoscaler") == kube.autoscaler_spec()
    copied = (K8S / "base" / "prometheus-rule.yaml").read_text()
    assert copied == (K8S / "prometheus-rule.yaml").read_text(), (
        "k8s/base/prometheus-rule.yaml is stale: cp k8s/prometheus-rule.yaml k8s/base/"
    )
    assert one(docs, "PrometheusRule") == yaml.safe_load(copied)


def test_the_base_scheduler_preloads_our_plugins_and_serves_the_api_route(kubectl):
    c = scheduler(one(build(kubectl, K8S / "base"), "DaskCluster"))
    assert "--preload" in c["args"]
    assert c["args"][c["args"].index("--preload") + 1] == "cluster_app.observe.preload"
    routes = json.loads(env(c)["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"])
    assert "distributed.http.scheduler.api" in routes
    assert "distributed.http.scheduler.prometheus" in routes  # the defaults stay


def test_the_cpu_overlay_is_the_base_in_its_namespace(kubectl):
    docs = build(kubectl, K8S / "overlays" / "cpu")
    assert one(docs, "DaskCluster") == namespaced(kube.cluster_spec())
    assert "nvidia.com/gpu" not in json.dumps(docs)


def test_the_gpu_overlay_sets_the_gpus_and_the_memory_fraction(kubectl):
    cluster = one(build(kubectl, K8S / "overlays" / "gpu"), "DaskCluster")
    res, e = worker(cluster)["resources"], env(worker(cluster))
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    assert e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    assert e["JAX_PLATFORMS"] == "cuda"
    expected = kube.cluster_spec(image="cluster-app-gpu:0.1.0", gpu=kube.GPU(1, 0.9))
    assert cluster == namespaced(expected)
    assert "nvidia.com/gpu" not in json.dumps(cluster["spec"]["scheduler"])


def test_the_gpu_overlay_takes_each_value_from_one_place(kubectl, tmp_path):
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    values = k8s / "overlays" / "gpu" / "gpu.yaml"
    text = values.read_text()
    text = text.replace('count: "1"', 'count: "4"').replace(
        'memFraction: "0.9"', 'memFraction: "0.45"'
    )
    values.write_text(text)
    cluster = one(build(kubectl, k8s / "overlays" / "gpu"), "DaskCluster")
    expected = kube.cluster_spec(image="cluster-app-gpu:0.1.0", gpu=kube.GPU(4, 0.45))
    assert cluster == namespaced(expected)


def test_the_s3_component_is_the_s3_store_spec(kubectl, tmp_path):
    d = overlay(
        tmp_path,
        "resources: [{k8s}/overlays/cpu]\ncomponents: [{k8s}/components/s3-store]\n",
    )
    docs = build(kubectl, d)
    for doc in docs:
        validate(doc)
    store = kube.S3Store("s3://cluster-app/store")
    assert one(docs, "DaskCluster") == namespaced(kube.cluster_spec(store=store))
    assert "S3StoreSettings" not in by_kind(docs)  # local config: read, never applied


def test_the_s3_component_on_the_gpu_overlay_is_the_gpu_s3_spec(kubectl, tmp_path):
    d = overlay(
        tmp_path,
        "resources: [{k8s}/overlays/gpu]\ncomponents: [{k8s}/components/s3-store]\n",
    )
    got = one(build(kubectl, d), "DaskCluster")
    want = namespaced(
        kube.cluster_spec(
            image="cluster-app-gpu:0.1.0", gpu=1, store=kube.S3Store("s3://cluster-app/store")
        )
    )
    # the same variables; the order of a list of variables does not matter to Kubernetes
    for part in (worker, scheduler):
        assert env(part(got)) == env(part(want))
        part(got)["env"] = part(want)["env"] = None
    assert got == want


def _operator_labels(component: str) -> dict[str, str]:
    """The labels the operator's own code gives the cluster's scheduler or worker pods."""
    from dask_kubernetes.operator.controller import controller

    ops: Any = controller  # typed with kopf's types; plain dicts are what they take
    if component == "scheduler":
        spec = ops.build_scheduler_deployment_spec(kube.NAME, {}, {}, {})
    else:
        name = f"{kube.NAME}-default"
        spec = ops.build_worker_deployment_spec(
            name, NAMESPACE, kube.NAME, "abc", {"containers": []}, {}, {}
        )
    return spec["spec"]["template"]["metadata"]["labels"]


def test_the_docs_patch_for_clusters_without_the_prometheus_operator_drops_its_kinds(
    kubectl, tmp_path
):
    page = (ROOT / "docs" / "deploy-kubernetes.md").read_text()
    section = page.split("### Without the Prometheus Operator", 1)[1]
    patch = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = build(kubectl, overlay(tmp_path, "resources: [{k8s}/overlays/cpu]\n" + patch))
    assert {k: len(v) for k, v in by_kind(docs).items()} == {
        k: n for k, n in KINDS.items() if k not in {"PodMonitor", "PrometheusRule"}
    }


def test_the_network_policy_admits_only_ours_to_8786_and_8787(kubectl):

    docs = build(kubectl, K8S / "overlays" / "cpu")
    policy = one(docs, "NetworkPolicy")["spec"]
    labels = _operator_labels("scheduler")
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    ports: dict[int, list] = {}
    for rule in policy["ingress"]:
        assert rule["from"], "a rule with no peers admits everyone"
        for p in rule["ports"]:
            assert p["protocol"] == "TCP"
            ports.setdefault(p["port"], []).extend(rule["from"])
    assert set(ports) == {8786, 8787}
    worker_labels = _operator_labels("worker")

    def admits(port: int, pod_labels: dict | None = None, ns: str | None = None) -> bool:
        for peer in ports[port]:
            pods = peer.get("podSelector", {}).get("matchLabels")
            namespaces = peer.get("namespaceSelector", {}).get("matchLabels")
            if pod_labels is not None and pods is not None and pods.items() <= pod_labels.items():
                return True
            if ns is not None and namespaces == {"kubernetes.io/metadata.name": ns}:
                return True
        return False

    for port in (8786, 8787):
        assert admits(port, worker_labels)  # the cluster's workers
        assert admits(port, {"cluster-app/client": "true"})  # our clients
        assert admits(port, ns="dask-operator")  # the autoscaler: HTTP, or RPC
        assert not admits(port, {"app": "something-else"})
    assert admits(8787, ns="monitoring") and not admits(8786, ns="monitoring")
    # the scheduler really listens on those two ports
    c = scheduler(one(docs, "DaskCluster"))
    assert {p["containerPort"] for p in c["ports"]} == {8786, 8787}


def test_the_pod_monitor_scrapes_the_schedulers_metrics_port(kubectl):
    docs = build(kubectl, K8S / "overlays" / "cpu")
    monitor = one(docs, "PodMonitor")["spec"]
    labels = _operator_labels("scheduler")
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    port_names = {p["name"] for p in scheduler(one(docs, "DaskCluster"))["ports"]}
    assert endpoint["port"] in port_names


def test_the_s3_secret_template_validates_and_holds_no_credentials():
    doc = yaml.safe_load((K8S / "components" / "s3-store" / "secret-template.yaml").read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"]["name"] == kube.S3_SECRET
    data = doc["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(data)
    assert data["AWS_ACCESS_KEY_ID"] == data["AWS_SECRET_ACCESS_KEY"] == "REPLACE-ME"


# ---------------------------------------------------------------- the image
def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent) decides."""
    parts = path.split("/")
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        glob = pat.replace("**/", "")
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p.split("/")[-1], glob) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_the_dockerfile_copies_files_that_exist_and_reach_the_build_context():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "no Docker engine" in text  # it says it was never built here
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M)
    sources = [s for line in copies for s in line.split()]
    assert sources, "no COPY found"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, patterns), f".dockerignore drops {src}"
        if (ROOT / src).is_dir():
            py = next((ROOT / src).rglob("*.py")).relative_to(ROOT).as_posix()
            assert not _dockerignored(py, patterns), py
    for kept in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "cluster-app-store/x"):
        assert _dockerignored(kept, patterns), kept
    assert _dockerignored("cluster_app/__pycache__/x.pyc", patterns)
    # the paths the specs mount, the cache setting and the user the pods run as
    for path in (kube.STORE_PATH, kube.CACHE_PATH):
        assert path in text
    assert f"DASK_CLUSTER_APP__CLUSTER__COMPILATION_CACHE={kube.CACHE_PATH}" in text
    assert f"JAX_COMPILATION_CACHE_DIR={kube.CACHE_PATH}" in text
    assert f"--uid {kube.UID}" in text and f"USER {kube.UID}" in text
    for module in kube.SCHEDULER_PRELOADS:  # the build checks the preloads import
        assert module in text
    # the package data the image needs is in what it copies
    assert (ROOT / "cluster_app" / "cluster_app.yaml").exists()


# ---------------------------------------------------------------- the scheduler it runs
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _scheduler_as_specified(store: pathlib.Path):
    """``dask scheduler`` with the DaskCluster's args and env, on loopback ports."""
    c = scheduler(kube.cluster_spec())
    args = list(c["args"])
    assert args[:2] == ["dask", "scheduler"]
    args[args.index("--host") + 1] = "127.0.0.1"
    port, dashboard = _free_port(), _free_port()
    argv = [
        str(pathlib.Path(sys.executable).parent / "dask"),
        *args[1:],
        "--port",
        str(port),
        "--dashboard-address",
        f"127.0.0.1:{dashboard}",
    ]
    environ = {**os.environ, **env(c)}
    environ["DASK_CLUSTER_APP__STORE__URL"] = str(store)  # the volume's stand-in
    proc = subprocess.Popen(
        argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).text == "ok":
                    break
            assert time.monotonic() < deadline, "the scheduler did not come up"
            time.sleep(0.2)
        yield url, f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_scheduler_as_specified_serves_our_page_metrics_and_the_operators_query(
    tmp_path, monkeypatch
):
    from dask_kubernetes.operator.controller import controller
    from distributed import Client

    with _scheduler_as_specified(tmp_path / "store") as (url, address):
        assert httpx.get(f"{url}/cluster-app", timeout=10).status_code == 200  # the preload's page
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert "cluster_app_agents" in metrics  # the FleetMonitor, installed by the preload
        # our target from the start (the scaling preload), before any client: the minimum
        assert httpx.get(f"{url}/api/v1/adaptive_target", timeout=10).json() == {"workers": 1}

        async def lookup(service, namespace, port_name="tcp-comm", allow_external=True):
            # what the operator would look up in the Kubernetes API (none can run here)
            return url if port_name == "http-dashboard" else address

        monkeypatch.setattr(controller, "get_scheduler_address", lookup)
        with Client(address, timeout=30) as client:
            got = client.sync(controller.get_desired_workers, "cluster-app-scheduler", NAMESPACE)
            assert got == 1
            names = lambda dask_scheduler: list(dask_scheduler.plugins)  # noqa: E731 (by value)
            plugins: Any = client.run_on_scheduler(names)
            assert "cluster-app-monitor" in plugins
            assert "cluster-app-scaling" in plugins
            assert "cluster-app-keeper" in plugins

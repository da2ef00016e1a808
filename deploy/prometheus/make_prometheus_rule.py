"""Write k8s/prometheus-rule.yaml from deploy/prometheus/cluster-app-rules.yml (one source)."""

from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "cluster-app-rules.yml"
OUT = ROOT / "k8s" / "prometheus-rule.yaml"
# kustomize reads only files in or below a kustomization: the base carries its own copy
COPIES = (OUT, ROOT / "k8s" / "base" / "prometheus-rule.yaml")
HEAD = """\
# The alert and recording rules of deploy/prometheus/cluster-app-rules.yml as a PrometheusRule
# (prometheus-operator / kube-prometheus-stack). Generated: `make k8s/prometheus-rule.yaml`;
# tests/e2e/test_prometheus.py fails if the two differ. What each alert means: docs/runbook.md.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "cluster-app",
            "labels": {"app.kubernetes.io/name": "cluster-app", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }
    return HEAD + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    text = render()
    for out in COPIES:
        out.write_text(text)
        sys.stdout.write(f"wrote {out.relative_to(ROOT)}\n")

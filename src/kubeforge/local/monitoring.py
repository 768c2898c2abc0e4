"""Prometheus and Alertmanager of the local platform (Debian's packages), on 127.0.0.1.

Prometheus scrapes the operators' metrics endpoint and every local pod that asks to be
scraped (the gateways and Tritons: the runner writes them to a file_sd file, see
runner.scrape), evaluates kubeforge's alerting rules (those shipped with the package, and
each PrometheusRule object, which the runner writes out: see runner.rules) and sends what
fires to Alertmanager.
Alertmanager keeps the alerts for people (its UI and API) and has no receivers to notify:
wiring one (Slack, PagerDuty, e-mail) in its configuration file, which is written once and
then left to the user, is the user's choice. Its cluster port is off, so it
opens nothing beyond its web port.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import yaml

from .processes import free_port, spawn, terminate, wait_http

PROMETHEUS, ALERTMANAGER = "prometheus", "prometheus-alertmanager"
PROGRAMS = (PROMETHEUS, ALERTMANAGER)
SCRAPE_INTERVAL = "5s"


class NotInstalled(RuntimeError):
    """Prometheus or Alertmanager is not installed."""


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NotInstalled(
            f"{name} not found: install it (Debian/Ubuntu: `apt-get install {name}`, `make system-deps`)"
        )
    return path


# The Prometheus Operator's CRD reduced to what the API server needs: its names and a structural schema. The local
# platform serves the kind so that ModelDeployments get rules of their own, as in a cluster that runs the
# Prometheus Operator; the runner loads them into the local Prometheus (runner.rules).
PROMETHEUS_RULE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "PrometheusRule", "listKind": "PrometheusRuleList", "plural": "prometheusrules"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                },
            }
        ],
    },
}


def cluster_rules(root: Path) -> Path:
    """The folder of rule files the runner writes from PrometheusRule objects, loaded beside the shipped rules."""
    return root / "cluster-rules"


def address_file(root: Path) -> Path:
    """host:port of the running Prometheus, for the runner to ask it to reload."""
    return root / "address"


def rule_files() -> list[Path]:
    """kubeforge's alerting rules as shipped with the package (the spec of each PrometheusRule)."""
    folder = Path(str(resources.files("kubeforge.monitoring"))) / "rules"
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def prometheus_config(operator_metrics: int, alertmanager: int, targets: Path, rules: list[Path]) -> dict:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(folder / "*.yaml") for folder in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]}]},
        "scrape_configs": [
            {
                "job_name": "kubeforge-operator",
                "static_configs": [{"targets": [f"127.0.0.1:{operator_metrics}"]}],
            },
            {
                # Gateways and Tritons: the file's labels are those Kubernetes pod discovery plus
                # labelmap would give (namespace, pod, the pod's labels).
                "job_name": "kubeforge-pods",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}],
            },
        ],
    }


def start_alertmanager(root: Path, logs: Path) -> tuple[int, int]:
    """(pid, port) of a fresh Alertmanager keeping its state under root."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "alertmanager.yml"
    if not config.exists():  # a receiver the user added stays
        config.write_text(yaml.safe_dump({"route": {"receiver": "local"}, "receivers": [{"name": "local"}]}))
    port = free_port()
    argv = [
        _binary(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one local instance
    ]
    return _start(argv, logs / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready"), port


def start_prometheus(
    root: Path, logs: Path, operator_metrics: int, alertmanager: int, targets: Path
) -> tuple[int, int]:
    """(pid, port) of a fresh Prometheus with kubeforge's rules, its data under root."""
    rules = root / "rules"
    shutil.rmtree(rules, ignore_errors=True)
    rules.mkdir(parents=True)
    for rule in rule_files():
        shutil.copy(rule, rules / rule.name)
    if not targets.exists():
        targets.parent.mkdir(parents=True, exist_ok=True)
        targets.write_text("[]")
    config = root / "prometheus.yml"
    folders = [rules, cluster_rules(root)]
    config.write_text(yaml.safe_dump(prometheus_config(operator_metrics, alertmanager, targets, folders)))
    port = free_port()
    argv = [
        _binary(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    pid = _start(argv, logs / "prometheus.log", f"http://127.0.0.1:{port}/-/ready")
    address_file(root).write_text(f"127.0.0.1:{port}")
    return pid, port


def _start(argv: list[str], log: Path, ready: str) -> int:
    proc = spawn(argv, log)
    try:
        wait_http(ready, proc, log, timeout=60)
    except BaseException:
        terminate(proc.pid)
        raise
    return proc.pid

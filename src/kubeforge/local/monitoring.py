"""Prometheus and Alertmanager of the local platform (Debian's packages), on 127.0.0.1.

Prometheus scrapes the operators' metrics endpoint and every local pod that asks to be
scraped (the gateways and Tritons: the runner writes them to a file_sd file, see
runner.scrape), evaluates kubeforge's alerting rules and sends what fires to Alertmanager.
Alertmanager keeps the alerts for people (its UI and API) and has no receivers to notify:
wiring one (Slack, PagerDuty, e-mail) is the user's choice. Its cluster port is off, so it
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


def rule_files() -> list[Path]:
    """kubeforge's alerting rules as shipped with the package (the spec of each PrometheusRule)."""
    folder = Path(str(resources.files("kubeforge.monitoring"))) / "rules"
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def prometheus_config(operator_metrics: int, alertmanager: int, targets: Path, rules: Path) -> dict:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules / "*.yaml")],
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
    config.write_text(yaml.safe_dump(prometheus_config(operator_metrics, alertmanager, targets, rules)))
    port = free_port()
    argv = [
        _binary(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    return _start(argv, logs / "prometheus.log", f"http://127.0.0.1:{port}/-/ready"), port


def _start(argv: list[str], log: Path, ready: str) -> int:
    proc = spawn(argv, log)
    try:
        wait_http(ready, proc, log, timeout=60)
    except BaseException:
        terminate(proc.pid)
        raise
    return proc.pid

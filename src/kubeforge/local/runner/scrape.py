"""Prometheus scrape targets for local pods, as a file_sd file the local Prometheus watches.

In a cluster, Prometheus discovers pods through the API server and scrapes those annotated
``prometheus.io/scrape: "true"`` on ``prometheus.io/port`` and ``prometheus.io/path`` (the
convention of the prometheus-community chart's ``kubernetes-pods`` job). Locally a pod's
ports are loopback ports the runner chose, which only the runner knows, so it writes the
same targets, with the labels that relabelling would give them, to a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .launch import LOOPBACK
from .state import PodState
from .volumes import write_atomic

SCRAPE, PORT, PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"


def label_name(key: str) -> str:
    """A Kubernetes label key as a Prometheus label name (what labelmap makes of it)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def targets(pods: Iterable[PodState]) -> list[dict[str, Any]]:
    """One file_sd target group per running pod that asks to be scraped."""
    groups = []
    for pod in pods:
        if pod.phase != "Running" or pod.annotations.get(SCRAPE) != "true":
            continue
        wanted = pod.annotations.get(PORT)
        port = next((p["local"] for p in pod.ports if wanted in (str(p["containerPort"]), p["name"])), None)
        if port is None:
            continue
        labels = {label_name(k): v for k, v in pod.labels.items()}
        labels.update(namespace=pod.namespace, pod=pod.name, __metrics_path__=pod.annotations.get(PATH, "/metrics"))
        groups.append({"targets": [f"{LOOPBACK}:{port}"], "labels": labels})
    return sorted(groups, key=lambda g: g["targets"][0])


def publish(path: Path, pods: Iterable[PodState]) -> None:
    """Write the targets file when it changed (Prometheus re-reads it on change)."""
    write_atomic(path, json.dumps(targets(pods), indent=1, sort_keys=True).encode())

"""Scrape targets of local pods: what Prometheus would discover and relabel in a cluster."""

from __future__ import annotations

from kubeforge.local.runner.scrape import targets
from kubeforge.local.runner.state import ContainerState, PodState


def pod(name: str, annotations: dict[str, str], phase: str = "Running") -> PodState:
    return PodState(
        namespace="team-a",
        name=name,
        owner_uid="u",
        template_hash="h",
        labels={"kubeforge.dev/modeldeployment": "cancer", "app.kubernetes.io/component": "triton"},
        dir="/nowhere",
        ports=[
            {"container": "triton", "name": "http", "containerPort": 8000, "local": 41000},
            {"container": "triton", "name": "metrics", "containerPort": 8002, "local": 41002},
        ],
        containers=[ContainerState("triton", False)],
        phase=phase,
        annotations=annotations,
    )


def test_annotated_running_pods_are_scraped_on_their_local_metrics_port_with_their_labels():
    scraped = pod("cancer-v1-abc", {"prometheus.io/scrape": "true", "prometheus.io/port": "8002"})
    by_name = pod("cancer-v2-abc", {"prometheus.io/scrape": "true", "prometheus.io/port": "http"})
    [first, second] = targets([scraped, by_name])
    assert first["targets"] == ["127.0.0.1:41000"] and second["targets"] == ["127.0.0.1:41002"]
    assert second["labels"] == {
        "kubeforge_dev_modeldeployment": "cancer",
        "app_kubernetes_io_component": "triton",
        "namespace": "team-a",
        "pod": "cancer-v1-abc",
        "__metrics_path__": "/metrics",
    }


def test_pods_that_do_not_ask_or_do_not_run_are_not_scraped():
    unannotated = pod("quiet", {})
    pending = pod("pending", {"prometheus.io/scrape": "true", "prometheus.io/port": "8002"}, phase="Pending")
    unknown_port = pod("odd", {"prometheus.io/scrape": "true", "prometheus.io/port": "9999"})
    assert targets([unannotated, pending, unknown_port]) == []

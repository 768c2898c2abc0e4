"""Operator settings, read from the environment (the Helm chart sets these)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import __version__


@dataclass(frozen=True)
class Settings:
    mlflow_tracking_uri: str
    """MLflow server the trainers log to and the operators read versions from."""
    trainer_image: str
    """Image of training pods when a TrainingJob does not name one."""
    triton_image: str
    """Image of Triton pods when a ModelDeployment does not name one."""
    gateway_image: str
    """Image of the inference gateway."""
    prometheus_url: str
    """Prometheus that canary analysis queries for custom metrics."""
    service_addressing: str = "dns"
    """How the gateway's route table addresses Triton: "dns" (<service>.<namespace>.svc, in a cluster) or
    "endpoints" (the Service's first endpoint address, for the local runtime, which has no cluster DNS)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            mlflow_tracking_uri=env("KUBEFORGE_MLFLOW_TRACKING_URI")
            or env("MLFLOW_TRACKING_URI")
            or "http://mlflow:5000",
            trainer_image=env("KUBEFORGE_TRAINER_IMAGE", f"ghcr.io/kubeforge/kubeforge:{__version__}"),
            triton_image=env("KUBEFORGE_TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.10-py3"),
            gateway_image=env("KUBEFORGE_GATEWAY_IMAGE", f"ghcr.io/kubeforge/kubeforge:{__version__}"),
            prometheus_url=env("KUBEFORGE_PROMETHEUS_URL", "http://prometheus-operated:9090"),
            service_addressing=env("KUBEFORGE_SERVICE_ADDRESSING", "dns"),
        )

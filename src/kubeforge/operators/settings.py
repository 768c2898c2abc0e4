"""Operator settings, read from the environment (the Helm chart sets these)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import __version__
from ..featurestore.config import StoreSettings
from ..monitoring import rules

REGISTRY = "ghcr.io/kubeforge"
"""Where kubeforge's images are published (operators/, serving/ and training/ hold their Dockerfiles)."""


def image(repository: str, tag: str = __version__) -> str:
    """A kubeforge image of this release: ``ghcr.io/kubeforge/<repository>:<version>``."""
    return f"{REGISTRY}/{repository}:{tag}"


OPERATOR_IMAGE = image("kubeforge-operator")
"""The operators, and FeatureView materialization Jobs (operators/Dockerfile)."""
GATEWAY_IMAGE = image("kubeforge-gateway")
"""The inference gateway, and the export step of Triton pods (serving/Dockerfile)."""
TRAINER_IMAGE = image("kubeforge-trainer")
"""Training pods, CPU build of torch (training/Dockerfile; the CUDA build is tagged ``<version>-cuda``)."""
TRITON_IMAGE = image("kubeforge-triton")
"""Triton with torch for the python backend (serving/triton/Dockerfile)."""


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
    feature_store: StoreSettings = field(default_factory=StoreSettings.from_env)
    """The Feast registry, online store and store directory FeatureViews go to (KUBEFORGE_FEAST_*); materialization
    Jobs get the same settings."""
    feature_store_pvc: str = ""
    """PersistentVolumeClaim holding feature_store.root, mounted there in materialization Jobs (the operator's pod
    mounts it at the same path); empty: no volume, as in the local runtime, where Jobs run on the operator's
    filesystem."""
    materializer_image: str = OPERATOR_IMAGE
    """Image of materialization Jobs."""
    runbook_url: str = rules.RUNBOOKS_URL
    """Where the runbook_url annotations of each deployment's own alerts point (``<base>/<AlertName>.md``)."""
    worker_limit: int = 100
    """Objects of one kind worked on at once (KUBEFORGE_WORKER_LIMIT; see runtime.WorkerLimit): what a burst of
    resources costs in memory, against how many are handled side by side."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            mlflow_tracking_uri=env("KUBEFORGE_MLFLOW_TRACKING_URI")
            or env("MLFLOW_TRACKING_URI")
            or "http://mlflow:5000",
            trainer_image=env("KUBEFORGE_TRAINER_IMAGE", TRAINER_IMAGE),
            triton_image=env("KUBEFORGE_TRITON_IMAGE", TRITON_IMAGE),
            gateway_image=env("KUBEFORGE_GATEWAY_IMAGE", GATEWAY_IMAGE),
            prometheus_url=env("KUBEFORGE_PROMETHEUS_URL", "http://prometheus-operated:9090"),
            service_addressing=env("KUBEFORGE_SERVICE_ADDRESSING", "dns"),
            feature_store=StoreSettings.from_env(),
            feature_store_pvc=env("KUBEFORGE_FEAST_PVC", ""),
            materializer_image=env("KUBEFORGE_MATERIALIZER_IMAGE", OPERATOR_IMAGE),
            runbook_url=env("KUBEFORGE_RUNBOOK_URL") or rules.RUNBOOKS_URL,
            worker_limit=_at_least_one("KUBEFORGE_WORKER_LIMIT", cls.worker_limit),
        )


def _at_least_one(name: str, default: int) -> int:
    text = os.environ.get(name) or str(default)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {text!r}")
    return int(text)

"""What every kubeforge operator shares: kopf settings, credentials, and a context object.

kopf keeps its own bookkeeping in annotations (not in status: the CRDs' strict schemas
would prune unknown status fields). Credentials are read at login time from
$KUBECONFIG when set, else from the pod's service account, so tests and the local
runtime can point an operator at any API server.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import kopf

from ..core import kube
from ..core.mlflow_rest import MLflowRegistry
from .labels import PART_OF
from .settings import Settings

ANNOTATION_PREFIX = "kopf.kubeforge.dev"
PODS_SELECTOR = f"{PART_OF}=kubeforge"
"""The pods the operators watch: kubeforge's own (trainers, Triton, gateways, materialization), whichever kind
owns them. One selector for all: kopf joins every selector set for a resource with AND."""


@dataclass(frozen=True)
class Context:
    api: kube.KubeApi
    settings: Settings
    capabilities: kube.Capabilities
    registry: MLflowRegistry


@functools.cache
def context() -> Context:
    """Created on first use, in the operator process, from the environment."""
    api = kube.connect()
    settings = Settings.from_env()
    return Context(api, settings, kube.capabilities(api), MLflowRegistry(settings.mlflow_tracking_uri))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.enabled = False  # kubeforge posts its own events, on transitions only
    settings.watching.server_timeout = 300
    settings.watching.label_selectors[("v1", "pods")] = PODS_SELECTOR
    settings.networking.request_timeout = 30
    context()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

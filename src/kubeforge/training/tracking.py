"""Connect the trainer to MLflow without paying for other packages' MLflow plugins.

MLflow loads every ``mlflow.request_header_provider`` entry point on its first HTTP
request. Feast ships one, so in an environment with Feast installed that first request
imports all of Feast (about 8 s, more than the training of a small model). Feast's
provider only adds headers inside Feast's own request context, which the trainer never
enters, so the trainer loads MLflow's header registry once with that plugin left out.
"""

from __future__ import annotations

import sys

import mlflow
from mlflow.utils import plugins

_SKIPPED_PLUGIN_PACKAGES = ("feast",)
_REGISTRY_MODULE = "mlflow.tracking.request_header.registry"


def connect(tracking_uri: str) -> None:
    """Point MLflow at tracking_uri for runs and model versions alike, with its
    request-header registry loaded lean.

    The registry is set too because MLflow otherwise reads MLFLOW_REGISTRY_URI
    from the environment, and a process started from a shell (or a parent) that
    exported one would register versions in a registry the operator never reads.
    """
    if _REGISTRY_MODULE not in sys.modules:
        load_all = plugins.get_entry_points

        def lean(group: str) -> list:
            return [ep for ep in load_all(group) if ep.value.split(".")[0] not in _SKIPPED_PLUGIN_PACKAGES]

        plugins.get_entry_points = lean
        try:
            __import__(_REGISTRY_MODULE)
        finally:
            plugins.get_entry_points = load_all
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)

"""Kubernetes client helpers: one way to load credentials and one way to write objects.

Every write kubeforge makes is a server-side apply with a single field manager, so
repeated applies are idempotent and fields owned by others (HPA replicas, user labels)
are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes import client, config, dynamic

FIELD_MANAGER = "kubeforge"


def api_client(kubeconfig: str | Path | None = None) -> client.ApiClient:
    """An ApiClient from an explicit kubeconfig, $KUBECONFIG, ~/.kube/config, or in-cluster credentials."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return config.new_client_from_config(config_file=str(path))
    try:
        return config.new_client_from_config()
    except config.ConfigException:
        config.load_incluster_config()
        return client.ApiClient()


def apply(api: client.ApiClient, obj: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """Server-side apply one object (create or update), taking ownership of the fields it sets."""
    dyn = dynamic.DynamicClient(api)
    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj.get("metadata", {}).get("namespace")
    if resource.namespaced and not namespace:
        namespace = "default"
    result = resource.server_side_apply(
        body=obj, name=obj["metadata"]["name"], namespace=namespace, field_manager=field_manager, force_conflicts=True
    )
    return result.to_dict()

"""Kubernetes client helpers: one way to load credentials and one way to write objects.

Every write kubeforge makes is a server-side apply with a single field manager, so
repeated applies are idempotent and fields owned by others (HPA replicas, user labels)
are left alone. Status is written through the status subresource, and only when it
changed, so a resync does not bump resourceVersions or wake watchers for nothing.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from .conditions import now_rfc3339

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


@functools.lru_cache(maxsize=8)
def _dynamic(api: client.ApiClient) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(api)


def resource(api: client.ApiClient, api_version: str, kind: str) -> Any:
    """The discovered API resource for apiVersion/kind (cached per client).

    api_version may be a bare group ("discovery.k8s.io"): the server's preferred version is used.
    """
    if "/" not in api_version and "." in api_version:
        return _dynamic(api).resources.get(group=api_version, kind=kind, preferred=True)
    return _dynamic(api).resources.get(api_version=api_version, kind=kind)


def apply(api: client.ApiClient, obj: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """Server-side apply one object (create or update), taking ownership of the fields it sets."""
    res = resource(api, obj["apiVersion"], obj["kind"])
    namespace = obj.get("metadata", {}).get("namespace")
    if res.namespaced and not namespace:
        namespace = "default"
    result = res.server_side_apply(
        body=obj, name=obj["metadata"]["name"], namespace=namespace, field_manager=field_manager, force_conflicts=True
    )
    return result.to_dict()


def get(api: client.ApiClient, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return resource(api, api_version, kind).get(name=name, namespace=namespace).to_dict()
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def delete(api: client.ApiClient, api_version: str, kind: str, name: str, namespace: str) -> bool:
    """Delete with background propagation; False when it was already gone."""
    try:
        resource(api, api_version, kind).delete(
            name=name, namespace=namespace, body={"propagationPolicy": "Background"}
        )
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        raise


def patch_status(
    api: client.ApiClient,
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    old: dict[str, Any] | None,
    new: dict[str, Any],
) -> bool:
    """Merge-patch the status subresource when new differs from old; True when it wrote."""
    if old == new:
        return False
    group, _, version = api_version.rpartition("/")
    plural = resource(api, api_version, kind).name
    custom = client.CustomObjectsApi(api)
    # A JSON merge patch sets keys present in new and removes keys dropped since old.
    patch = dict(new)
    for gone in set(old or {}) - set(new):
        patch[gone] = None
    custom.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": patch})
    return True


def write_status(
    api: client.ApiClient,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    new: dict[str, Any],
    events: list[tuple[str, str, str]],
    component: str,
) -> bool:
    """Patch body's status when it changed, and only then record events (type, reason, message):
    events mark transitions, so a resync that changes nothing stays silent."""
    meta = body["metadata"]
    if not patch_status(api, body["apiVersion"], body["kind"], meta["name"], meta["namespace"], old, new):
        return False
    for type_, reason, message in events:
        event(api, body, type_, reason, message, component=component)
    return True


@dataclass(frozen=True)
class Capabilities:
    """What the API server's version supports, for fields that newer clusters added."""

    major: int
    minor: int

    @property
    def indexed_jobs(self) -> bool:
        """Job.spec.completionMode: Indexed (1.21+), needed for multi-replica training."""
        return (self.major, self.minor) >= (1, 21)

    @property
    def job_suspend(self) -> bool:
        """Job.spec.suspend (1.21+)."""
        return (self.major, self.minor) >= (1, 21)


def capabilities(api: client.ApiClient) -> Capabilities:
    info = client.VersionApi(api).get_code()
    return Capabilities(int(info.major), int("".join(ch for ch in info.minor if ch.isdigit())))


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to owner (garbage collection deletes children with it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def event(
    api: client.ApiClient, obj: dict[str, Any], type_: str, reason: str, message: str, component: str = "kubeforge"
) -> None:
    """Record a core/v1 Event about obj (what `kubectl describe` shows)."""
    meta = obj["metadata"]
    now = now_rfc3339()
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
    }
    client.CoreV1Api(api).create_namespaced_event(meta["namespace"], body)

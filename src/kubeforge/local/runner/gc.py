"""Garbage collection for the local runtime: delete kubeforge's objects whose owners are gone.

In a cluster, kube-controller-manager's garbage collector deletes an object once every
owner in its ownerReferences is gone. The local control plane has no controller manager,
so without this a TrainingJob's Jobs (and their pods) would outlive it, and a TrainingJob
re-created under the same name would find its predecessor's Job in the way.

Only kubeforge's own objects (label ``app.kubernetes.io/managed-by: kubeforge-operator``)
are collected, as the runner only runs those. Dependents are listed before owners, and
each deletion is confirmed by reading the owner, so an owner created during a pass never
loses its children.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from ...core import kube
from ...operators import labels

log = logging.getLogger(__name__)

DEPENDENTS = (
    ("batch/v1", "Job"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("autoscaling/v1", "HorizontalPodAutoscaler"),
)
MANAGED = f"{labels.MANAGED_BY}=kubeforge-operator"


class Owners:
    """uids of the objects of each owner kind, listed once per pass (after the dependents)."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self._uids: dict[tuple[str, str], set[str]] = {}

    def exists(self, ref: dict[str, Any], namespace: str) -> bool:
        key = (ref["apiVersion"], ref["kind"])
        try:
            if key not in self._uids:
                self._uids[key] = {i["metadata"]["uid"] for i in kube.resource(self.api, *key).get().to_dict()["items"]}
            if ref["uid"] in self._uids[key]:
                return True
            # Confirm with a read: the owner may have been created after the list.
            live = kube.get(self.api, ref["apiVersion"], ref["kind"], ref["name"], namespace)
        except ResourceNotFoundError:
            return True  # a kind this client cannot see (yet): keep the object rather than guess
        return live is not None and live["metadata"]["uid"] == ref["uid"]


def collect(api: client.ApiClient, namespaces: set[str] | None = None) -> list[str]:
    """Delete kubeforge objects all of whose owners are gone; returns "Kind namespace/name" of each deleted."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for api_version, kind in DEPENDENTS:
        for obj in kube.resource(api, api_version, kind).get(label_selector=MANAGED).to_dict()["items"]:
            meta = obj["metadata"]
            watched = namespaces is None or meta["namespace"] in namespaces
            if watched and meta.get("ownerReferences") and not meta.get("deletionTimestamp"):
                found.append((api_version, kind, meta))
    owners = Owners(api)
    deleted = []
    for api_version, kind, meta in found:
        if any(owners.exists(ref, meta["namespace"]) for ref in meta["ownerReferences"]):
            continue
        if kube.delete(api, api_version, kind, meta["name"], meta["namespace"]):
            gone = ", ".join(f"{r['kind']} {r['name']} ({r['uid']})" for r in meta["ownerReferences"])
            log.info("%s %s/%s: owner %s is gone; deleted", kind, meta["namespace"], meta["name"], gone)
            deleted.append(f"{kind} {meta['namespace']}/{meta['name']}")
    return deleted

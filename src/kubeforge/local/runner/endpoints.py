"""Service endpoints for local pods, published as EndpointSlices on 127.0.0.1.

The API server refuses loopback addresses in v1 Endpoints, but not in EndpointSlices
(the object kube-proxy and DNS read today), so each Service whose selector matches
local pods gets one slice per pod (labelled with the Service's labels and
``kubernetes.io/service-name``), with that pod's local ports under the Service's
port names. Ready pods are ``ready: true``; the others are listed as not ready.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from ...core import kube
from .launch import LOOPBACK
from .state import PodState

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
RUNNER = "kubeforge-local-runner"


@functools.lru_cache(maxsize=4)
def api_version(api: client.ApiClient) -> str:
    """discovery.k8s.io/v1 where served (1.21+), else v1beta1."""
    for version in ("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"):
        try:
            kube.resource(api, version, "EndpointSlice")
            return version
        except ResourceNotFoundError:
            continue
    raise RuntimeError("the API server serves no EndpointSlice version")


def _local_port(pod: PodState, target: Any) -> int | None:
    return next((int(p["local"]) for p in pod.ports if target in (p["name"], p["containerPort"])), None)  # type: ignore[call-overload]


def _slice(version: str, service: client.V1Service, pod: PodState) -> dict[str, Any] | None:
    assert service.spec is not None and service.metadata is not None  # as read from the API server
    ports = []
    for sp in service.spec.ports or []:
        local = _local_port(pod, sp.target_port if sp.target_port is not None else sp.port)
        if local is None:
            return None  # this pod does not serve the port: not an endpoint of the Service
        ports.append({"name": sp.name or "", "port": local, "protocol": sp.protocol or "TCP"})
    ready = pod.ready or bool(service.spec.publish_not_ready_addresses)
    return {
        "apiVersion": version,
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service.metadata.name}-{pod.name}"[:253],
            "namespace": pod.namespace,
            # The Service's labels too, as the EndpointSlice controller copies them: readers select by them.
            "labels": {**(service.metadata.labels or {}), SERVICE_NAME: service.metadata.name, MANAGED_BY: RUNNER},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [LOOPBACK], "conditions": {"ready": ready}}],
        "ports": ports,
    }


def _selects(service: client.V1Service, pod: PodState) -> bool:
    assert service.spec is not None and service.metadata is not None  # as read from the API server
    selector = service.spec.selector or {}
    same_namespace = pod.namespace == service.metadata.namespace
    return bool(selector) and same_namespace and all(pod.labels.get(k) == v for k, v in selector.items())


def _comparable(obj: dict[str, Any]) -> tuple[Any, ...]:
    endpoints = [{"addresses": e["addresses"], "ready": e.get("conditions", {}).get("ready")} for e in obj["endpoints"]]
    return (obj["metadata"]["labels"], endpoints, obj.get("ports"))


def publish(api: client.ApiClient, local_pods: Iterable[PodState]) -> None:
    """Make the runner's EndpointSlices match the running local pods and the Services selecting them."""
    version = api_version(api)
    resource = kube.resource(api, version, "EndpointSlice")
    existing = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s
        for s in resource.get(label_selector=f"{MANAGED_BY}={RUNNER}").to_dict()["items"]
    }
    running = [p for p in local_pods if p.phase == "Running"]
    core = client.CoreV1Api(api)
    desired: dict[tuple[str, str], dict[str, Any]] = {}
    for namespace in {p.namespace for p in running}:
        for service in core.list_namespaced_service(namespace).items:
            for pod in running:
                if _selects(service, pod) and (body := _slice(version, service, pod)):
                    desired[(namespace, body["metadata"]["name"])] = body
    for key, body in desired.items():
        if key not in existing or _comparable(existing[key]) != _comparable(body):
            kube.apply(api, body, field_manager=RUNNER)
    for namespace, name in set(existing) - set(desired):
        kube.delete(api, version, "EndpointSlice", name, namespace)

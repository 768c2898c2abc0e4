"""Pure builders of a ModelDeployment's children. No I/O: unit-tested without a cluster.

Per live version (stable, canary, shadow): a Deployment running Triton, whose init
container exports the version from MLflow into an emptyDir model repository, and a
Service. Per ModelDeployment: one gateway Deployment + Service and the route table
ConfigMap it hot-reloads, and where the cluster serves them a PrometheusRule with its
alerts. A gateway per ModelDeployment keeps one model's traffic, tokens and metrics
apart from another's and lets each scale on its own.

Ports reach container args as ``$(KUBEFORGE_PORT_<NAME>)``, expanded from the
container's env as Kubernetes does; the local runtime overrides those env values
with free loopback ports, runs exactly the same pod specs, and publishes the
addresses as EndpointSlices carrying the Service's labels.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...api import ModelDeployment
from ...core.kube import owner_reference
from ...monitoring import rules
from ...serving.routes import FeatureRoute, ModelRoute, RouteTable, VersionRoute
from .. import labels, resources
from ..settings import Settings
from . import routetext

REPO_MOUNT = "/models"
ROUTES_MOUNT = "/etc/kubeforge/routes"
ROUTES_FILE = "routes.yaml"
TOKENS_MOUNT = "/etc/kubeforge/tokens"
PAYLOAD_LOG_MOUNT = "/var/log/kubeforge/payloads"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
GATEWAY_PORT = 8080
GATEWAY_PORTS = {"http": GATEWAY_PORT, "grpc": 8081}
"""The gateway's ports: the Open Inference Protocol over REST and over gRPC (tritonclient.grpc, perf_analyzer)."""
EXPORT_CONTAINER, TRITON_CONTAINER, GATEWAY_CONTAINER = "export", "triton", "gateway"
MEMORY_FIELDS = {
    EXPORT_CONTAINER: "spec.runtime.memory",
    TRITON_CONTAINER: "spec.runtime.memory",
    GATEWAY_CONTAINER: "spec.gateway.memory",
}
"""The spec field that sets each container's memory limit: what a container killed at it is told to raise."""


def version_name(md: str, version: str) -> str:
    return f"{md}-v{version}"


def service_address(service: str, namespace: str, port: int) -> str:
    """host:port of a Service's port by its cluster DNS name."""
    return f"{service}.{namespace}.svc:{port}"


def version_url(md: str, namespace: str, version: str) -> str:
    """Where a version's Triton answers HTTP in a cluster: its Service (triton_service)."""
    return f"http://{service_address(version_name(md, version), namespace, PORTS['http'])}"


def gateway_name(md: str) -> str:
    return f"{md}-gateway"


def routes_name(md: str) -> str:
    return f"{md}-routes"


def triton_model_name(registered: str) -> str:
    """Model directory name inside Triton (the registered name, made path-safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", registered)


def _meta(owner: dict[str, Any], name: str, component: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    md = owner["metadata"]["name"]
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": {**labels.common(component), labels.MODELDEPLOYMENT: md, **(extra or {})},
        "ownerReferences": [owner_reference(owner)],
    }


def _server_env(ports: dict[str, int]) -> list[dict[str, str]]:
    """The address to listen on and each named port, as env vars the command line refers to."""
    listen = {"name": labels.LISTEN_ADDRESS_ENV, "value": "0.0.0.0"}
    return [listen, *({"name": f"KUBEFORGE_PORT_{name.upper()}", "value": str(port)} for name, port in ports.items())]


def scrape_annotations(port: int) -> dict[str, str]:
    """Where Prometheus scrapes a pod: the prometheus.io annotations that pod discovery (the
    prometheus-community chart's kubernetes-pods job) and the local runtime both read."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _container_ports(ports: dict[str, int]) -> list[dict[str, Any]]:
    # protocol is part of the list-map key: server-side apply on older API servers needs it spelt out.
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports.items()]


def _service(owner: dict[str, Any], name: str, component: str, selector: dict[str, str], ports: dict[str, int]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, name, component, {k: v for k, v in selector.items() if k != labels.COMPONENT}),
        "spec": {
            "selector": selector,
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports.items()],
        },
    }


def triton_deployment(
    owner: dict[str, Any],
    md: ModelDeployment,
    model: str,
    version: str,
    role: str,
    settings: Settings,
    replicas_now: int | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Triton serving one registered version, exported from MLflow by an init container.

    run: the MLflow run the version was registered from, kept on the Deployment (labels.MODEL_RUN) so a later
    pass can tell another registration of the same version number (see rollout.Plan.reexports).

    Replicas: spec.replicas; with autoscaling, those the Deployment asks for now (replicas_now, the autoscaler's
    choice) kept within minReplicas and maxReplicas, as the autoscaler keeps them itself, and minReplicas for a new
    one. So applying the Deployment again (a new runtime, new bounds) never drops a scaled-up version back to its
    minimum under load, whichever field manager the API server says holds the replicas (a scale by the autoscaler
    leaves the applier holding them before Kubernetes 1.22); and without an autoscaler (the local runtime) the
    bounds still hold."""
    name = version_name(owner["metadata"]["name"], version)
    rt = md.spec.runtime
    selector = {labels.MODELDEPLOYMENT: owner["metadata"]["name"], labels.MODEL_VERSION: version}
    # The role stays off the pod template: promoting a canary must not restart its Triton.
    pod_labels = {**labels.common("triton"), **selector}
    exporter = {
        "name": EXPORT_CONTAINER,
        "image": settings.gateway_image,
        "command": [
            "kubeforge",
            "serving",
            "export",
            "--model",
            model,
            "--version",
            version,
            "--repository",
            REPO_MOUNT,
            "--triton-name",
            triton_model_name(model),
            "--runtime",
            json.dumps(rt.to_wire(), sort_keys=True),
        ],
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_tracking_uri}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": REPO_MOUNT}],
        "resources": resources.server(rt.cpu, rt.memory),  # runs before Triton: the pod asks for no more
    }
    triton = {
        "name": TRITON_CONTAINER,
        "image": rt.image or settings.triton_image,
        "command": [
            "tritonserver",
            f"--model-repository={REPO_MOUNT}",
            "--model-control-mode=explicit",
            f"--load-model={triton_model_name(model)}",
            f"--http-address=$({labels.LISTEN_ADDRESS_ENV})",
            "--http-port=$(KUBEFORGE_PORT_HTTP)",
            f"--grpc-address=$({labels.LISTEN_ADDRESS_ENV})",
            "--grpc-port=$(KUBEFORGE_PORT_GRPC)",
            f"--metrics-address=$({labels.LISTEN_ADDRESS_ENV})",
            "--metrics-port=$(KUBEFORGE_PORT_METRICS)",
            "--exit-timeout-secs=10",
        ],
        "env": _server_env(PORTS),
        # Why Triton exits (a model that fails to load) reaches the Pod's status and so lastFailure.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": _container_ports(PORTS),
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2},
        "volumeMounts": [{"name": "models", "mountPath": REPO_MOUNT}],
        "resources": resources.server(rt.cpu, rt.memory, rt.gpus),
    }
    replicas, scaling = md.spec.replicas, md.spec.autoscaling
    if scaling is not None:
        replicas = min(max(replicas_now or 0, scaling.min_replicas), scaling.max_replicas)
    meta = _meta(owner, name, "triton", {labels.MODEL_VERSION: version, labels.ROLE: role})
    if run:
        meta["annotations"] = {labels.MODEL_RUN: run}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": scrape_annotations(PORTS["metrics"])},
                "spec": {
                    "initContainers": [exporter],
                    "containers": [triton],
                    "volumes": [{"name": "models", "emptyDir": {}}],
                },
            },
        },
    }


def triton_service(owner: dict[str, Any], version: str) -> dict[str, Any]:
    selector = {labels.MODELDEPLOYMENT: owner["metadata"]["name"], labels.MODEL_VERSION: version}
    return _service(owner, version_name(owner["metadata"]["name"], version), "triton", selector, PORTS)


def autoscaler(owner: dict[str, Any], md: ModelDeployment, version: str) -> dict[str, Any]:
    """autoscaling/v1 (served by every Kubernetes release) on CPU utilisation."""
    scaling = md.spec.autoscaling
    assert scaling is not None
    name = version_name(owner["metadata"]["name"], version)
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(owner, name, "triton", {labels.MODEL_VERSION: version}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "targetCPUUtilizationPercentage": scaling.target_cpu_utilization,
        },
    }


def route_table(
    md: ModelDeployment,
    name: str,
    task: str,
    versions: list[dict[str, Any]],
    features: dict[str, Any] | None = None,
    gateways: tuple[str, ...] = (),
) -> RouteTable:
    """The gateway's table: clients call the model by the ModelDeployment's name.

    versions: [{version, role, url, endpoints, model, weight, percent, featureOrder, drift}] for what is live and
    ready; empty until the stable version has an address, when the gateway serves no model yet. features: the
    FeatureView requests with entity keys are fed from (serving.routes.FeatureRoute, wire format). Drift settings go
    in with spec.monitoring.drift enabled (each version's baseline is its drift entry), payload log settings when
    set, feedback settings with spec.monitoring.feedback enabled. gateways: the URL of each ready gateway pod;
    where there are several, each is told of all (its peers, which it asks for the answers it did not give).
    """
    if not versions:
        return RouteTable(models={})
    monitoring = md.spec.monitoring
    return RouteTable(
        models={
            name: ModelRoute(
                versions=[
                    VersionRoute(
                        version=v["version"],
                        role=v["role"],
                        url=v["url"],
                        endpoints=v.get("endpoints"),
                        triton_model=triton_model_name(v["model"]),
                        weight=v.get("weight", 0),
                        percent=v.get("percent", 0),
                        feature_order=v.get("featureOrder"),
                        drift=v.get("drift"),
                    )
                    for v in versions
                ],
                task=task,  # type: ignore[arg-type]
                sticky_header=md.spec.routing.sticky_header,
                fallback=md.spec.fallback.enabled,
                timeout_ms=md.spec.fallback.timeout_ms,
                join_requests=md.spec.gateway.join_requests,
                features=FeatureRoute.model_validate(features) if features else None,
                drift=monitoring.drift if monitoring.drift.enabled else None,
                payload_log=monitoring.payload_log,
                feedback=monitoring.feedback if monitoring.feedback.enabled else None,
            )
        },
        peers=sorted(gateways) if len(gateways) > 1 else None,
    )


def routes_configmap(owner: dict[str, Any], table: RouteTable) -> dict[str, Any]:
    """The table as YAML (routetext)."""
    text = routetext.TEXTS.text(table.to_wire())
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, routes_name(owner["metadata"]["name"]), "gateway"),
        "data": {ROUTES_FILE: text},
    }


def gateway_deployment(owner: dict[str, Any], md: ModelDeployment, settings: Settings) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    selector = {labels.MODELDEPLOYMENT: name, labels.COMPONENT: "gateway"}
    args = [
        "kubeforge",
        "serving",
        "gateway",
        "--routes",
        f"{ROUTES_MOUNT}/{ROUTES_FILE}",
        "--host",
        f"$({labels.LISTEN_ADDRESS_ENV})",
        "--port",
        "$(KUBEFORGE_PORT_HTTP)",
        "--grpc-port",
        "$(KUBEFORGE_PORT_GRPC)",
    ]
    volumes: list[dict[str, Any]] = [{"name": "routes", "configMap": {"name": routes_name(name)}}]
    mounts: list[dict[str, Any]] = [{"name": "routes", "mountPath": ROUTES_MOUNT, "readOnly": True}]
    if md.spec.auth is not None:
        args += ["--tokens", f"{TOKENS_MOUNT}/tokens"]
        volumes.append({"name": "tokens", "secret": {"secretName": md.spec.auth.secret_ref.name}})
        mounts.append({"name": "tokens", "mountPath": TOKENS_MOUNT, "readOnly": True})
    if md.spec.monitoring.payload_log is not None:
        # The gateway rotates its files, so the volume holds at most (maxFiles + 1) * maxFileMb of them.
        args += ["--payload-log-dir", PAYLOAD_LOG_MOUNT]
        volumes.append({"name": "payload-log", "emptyDir": {}})
        mounts.append({"name": "payload-log", "mountPath": PAYLOAD_LOG_MOUNT})
    env = _server_env(GATEWAY_PORTS)
    if md.spec.features is not None:
        # The gateway reads the online store materialization Jobs write: Redis, or the sqlite file on the store's
        # volume, mounted writable because sqlite readers take locks and may have to roll back a hot journal.
        store = settings.feature_store
        env += [{"name": k, "value": v} for k, v in store.env().items() if v]
        if settings.feature_store_pvc:
            volumes.append(
                {"name": "feature-store", "persistentVolumeClaim": {"claimName": settings.feature_store_pvc}}
            )
            mounts.append({"name": "feature-store", "mountPath": str(store.root)})
    container = {
        "name": GATEWAY_CONTAINER,
        "image": settings.gateway_image,
        "command": args,
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": _container_ports(GATEWAY_PORTS),
        "readinessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 2},
        "volumeMounts": mounts,
        "resources": resources.server(md.spec.gateway.cpu, md.spec.gateway.memory),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, gateway_name(name), "gateway"),
        "spec": {
            "replicas": md.spec.gateway.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**labels.common("gateway"), **selector},
                    "annotations": scrape_annotations(GATEWAY_PORT),
                },
                "spec": {"containers": [container], "volumes": volumes},
            },
        },
    }


def gateway_service(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    selector = {labels.MODELDEPLOYMENT: name, labels.COMPONENT: "gateway"}
    return _service(owner, gateway_name(name), "gateway", selector, GATEWAY_PORTS)


def prometheus_rule(owner: dict[str, Any], targets: dict[str, Any], runbooks: str) -> dict[str, Any]:
    """The deployment's own PrometheusRule (``<name>-slo``): its SLO and drift alerts with targets (the keyword
    arguments of monitoring.rules.deployment_rule) written in, their runbooks under runbooks; garbage collection
    deletes it with its owner."""
    meta = owner["metadata"]
    rule = rules.deployment_rule(meta["namespace"], meta["name"], runbooks=runbooks, **targets)
    extra = rule["metadata"]["labels"]
    return {**rule, "metadata": _meta(owner, rule["metadata"]["name"], "alert-rules", extra)}

"""What a ModelDeployment's passes see of its children: the entries of the operator's indexes over its Deployments,
EndpointSlices and pods, and the :class:`rollout.Observed` a pass plans from, built from them.

The indexes are kopf's, over watches label-selected on the API server (handlers registers them): a pass reads no
child from the API server. Only a gateway that is available is asked whether it serves the model, and its replicas'
metrics are scraped for analysis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from ...core import plainhttp, podfailure
from ..labels import COMPONENT, MODEL_RUN, MODEL_VERSION, MODELDEPLOYMENT
from ..runtime import Context
from . import applied, children
from .rollout import GATEWAY, Observed

SERVICE_NAME = "kubernetes.io/service-name"


class Workload(NamedTuple):
    """One Deployment of a ModelDeployment, as the md_workloads index holds it."""

    part: str  # its model version, or GATEWAY
    available: bool  # at least one pod available
    short: bool  # fewer ready pods than it wants
    replicas: int  # how many pods it asks for now (the autoscaler's choice, where one scales it)
    name: str
    generation: int  # changes with its spec: one later than the operator's last apply is someone else's edit
    run: str = ""  # the MLflow run its version was registered from, as the operator last wrote it (MODEL_RUN)
    left: applied.Left | None = None  # what its owner last applied of it, for a first pass after a start


class Address(NamedTuple):
    """Where a version's Triton or the gateway answers, from the ready endpoints of one of its EndpointSlices."""

    part: str  # model version, or GATEWAY
    urls: tuple[str, ...]  # http://address:port of each ready endpoint
    grpc: str | None  # host:port of the first one's gRPC port, if it has one


def part_of(labels: Mapping[str, str]) -> str | None:
    """The model version a child serves, GATEWAY for the gateway's, None for neither."""
    return GATEWAY if labels.get(COMPONENT) == "gateway" else labels.get(MODEL_VERSION)


def workload(
    name: str, labels: Mapping[str, str], meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> Workload | None:
    """A Deployment of a ModelDeployment as its index holds it: which serve (readiness), which versions have one
    (pruning), how many replicas each asks for now (autoscaling), which someone else changed (handlers._edited),
    which registration each version's Triton serves (rollout.Plan.reexports), what was applied of each (applied)."""
    part = part_of(labels)
    if part is None:
        return None
    available = (status.get("availableReplicas") or 0) >= 1
    replicas = spec.get("replicas") or 0
    short = (status.get("readyReplicas") or 0) < replicas
    generation = meta.get("generation") or 0
    run = (meta.get("annotations") or {}).get(MODEL_RUN, "")
    return Workload(part, available, short, replicas, name, generation, run, applied.left(meta))


def address(labels: Mapping[str, str], body: Mapping[str, Any]) -> Address | None:
    """The ready addresses of an EndpointSlice of a ModelDeployment, with endpoints addressing (see observed)."""
    owner, urls, grpc = labels[MODELDEPLOYMENT], slice_urls(body, "http"), slice_urls(body, "grpc")
    part = GATEWAY if labels.get(SERVICE_NAME) == children.gateway_name(owner) else labels.get(MODEL_VERSION)
    return Address(part, urls, grpc[0].removeprefix("http://") if grpc else None) if part and urls else None


def pod(
    name: str, labels: Mapping[str, str], meta: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """A pod of a ModelDeployment, as much of it as tells why it fails (core.podfailure), with the part it serves."""
    part = part_of(labels)
    if part is None:
        return None
    return part, {
        "metadata": {"name": name, "deletionTimestamp": meta.get("deletionTimestamp")},
        "status": body.get("status"),
    }


@dataclass(frozen=True)
class Watched:
    """The indexes a pass reads, as kopf passes them to every handler."""

    workloads: Mapping[tuple[str, str], Iterable[Workload]]
    addresses: Mapping[tuple[str, str], Iterable[Address]]
    pods: Mapping[tuple[str, str], Iterable[tuple[str, dict[str, Any]]]]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Watched:
        return cls(kwargs["md_workloads"], kwargs["md_addresses"], kwargs["md_pods"])


def slice_urls(endpoint_slice: Mapping[str, Any], port_name: str) -> tuple[str, ...]:
    """http://address:port of each ready endpoint of an EndpointSlice."""
    port = next((p["port"] for p in endpoint_slice.get("ports") or [] if p.get("name") == port_name), None)
    return tuple(
        f"http://{endpoint['addresses'][0]}:{port}"
        for endpoint in endpoint_slice.get("endpoints") or []
        if port and endpoint.get("addresses") and (endpoint.get("conditions") or {}).get("ready", True)
    )


def observed(ctx: Context, body: dict[str, Any], watched: Watched) -> Observed:
    """Readiness, addresses and pod failures of a ModelDeployment's children, from the indexes (no request), and
    whether its gateway serves it (one request, while the gateway is available)."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    key = (ns, name)
    workloads = list(watched.workloads.get(key, ()))
    ready = frozenset(w.part for w in workloads if w.available and w.part != GATEWAY)
    gateway_ready = any(w.available for w in workloads if w.part == GATEWAY)
    urls: dict[str, str] = {}
    endpoints: dict[str, tuple[str, ...]] = {}
    gateway_url = gateway_grpc = None
    # Each ready pod's address, from the EndpointSlices (in a cluster, the slices of the Services' pods): the
    # gateway's replicas are scraped one by one for analysis.
    found: dict[str, set[str]] = defaultdict(set)
    slices = sorted(watched.addresses.get(key, ()), key=lambda a: a.urls)
    for address in slices:
        found[address.part].update(address.urls)
    if ctx.settings.service_addressing == "endpoints":
        # EndpointSlices, not Endpoints: they may carry loopback addresses (the local runtime's). Every ready
        # replica of a version goes in the route table, which no Service balances over here; the gateway's own
        # address is its first replica's, the same from pass to pass.
        gateway_url, gateway_grpc = next(((a.urls[0], a.grpc) for a in slices if a.part == GATEWAY), (None, None))
        endpoints = {part: tuple(sorted(u)) for part, u in found.items() if part != GATEWAY}
        urls = {part: replicas[0] for part, replicas in endpoints.items()}
    else:  # the versions' Services: the plan addresses them (rollout._addressed)
        gateway = children.gateway_name(name)
        gateway_url = f"http://{children.service_address(gateway, ns, children.GATEWAY_PORT)}"
        gateway_grpc = children.service_address(gateway, ns, children.GATEWAY_PORTS["grpc"])
    model_ready = False
    if gateway_ready and gateway_url:
        try:
            model_ready = plainhttp.get(f"{gateway_url}/v2/models/{name}/ready", timeout=2).status == 200
        except plainhttp.HttpError:
            model_ready = False
    # Why pods fail, only while one of its Deployments has fewer ready pods than it wants.
    failures: dict[str, dict[str, Any]] = {}
    if any(w.short for w in workloads):
        parts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for part, pod in list(watched.pods.get(key, ())):
            parts[part].append(pod)
        picked = {part: podfailure.pick(pods, children.MEMORY_FIELDS) for part, pods in parts.items()}
        failures = {part: failure for part, failure in picked.items() if failure is not None}
    # What each version's Triton asks for now, only where an autoscaler chooses it (children.triton_deployment keeps
    # its choice): without one, the count the pass itself applied is no news to a later pass.
    scaled = bool((body.get("spec") or {}).get("autoscaling"))
    replicas = {w.part: w.replicas for w in workloads if w.part != GATEWAY} if scaled else {}
    return Observed(
        ready,
        urls,
        gateway_ready,
        gateway_url,
        model_ready,
        failures=failures,
        gateway_grpc=gateway_grpc,
        version_endpoints={part: replicas for part, replicas in endpoints.items() if len(replicas) > 1},
        gateway_replicas=tuple(sorted(found[GATEWAY])) or ((gateway_url,) if gateway_url else ()),
        replicas=replicas,
        runs={w.part: w.run for w in workloads if w.part != GATEWAY and w.run},
    )


def scrape(urls: tuple[str, ...]) -> dict[str, str]:
    """Each gateway replica's /metrics text by its URL, several at once (one that hangs costs its timeout once, not
    once per replica); one that does not answer is left out."""

    def scrape(url: str) -> str | None:
        try:
            resp = plainhttp.get(f"{url}/metrics", timeout=5)
        except plainhttp.HttpError:
            return None
        return resp.text if resp.status == 200 else None

    if len(urls) > 1:
        with ThreadPoolExecutor(min(len(urls), 8), thread_name_prefix="scrape") as pool:
            texts = dict(zip(urls, pool.map(scrape, urls), strict=True))
    else:
        texts = {url: scrape(url) for url in urls}
    return {url: text for url, text in texts.items() if text is not None}


def together(texts: dict[str, str]) -> str | None:
    """Every gateway replica's series in one text, for the parsers that add them up (shadow agreement) or take the
    worst (retrain triggers); None when no replica answered."""
    return "\n".join(texts.values()) or None

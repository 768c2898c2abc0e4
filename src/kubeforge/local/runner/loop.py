"""The runner's control loop: list kubeforge's Jobs and Deployments, run their pods, report back.

It polls the API server (every ``interval`` seconds) rather than watching: a list of a
handful of objects from a loopback API server costs less than keeping watches healthy
across API server restarts, and a level-based tick recovers from any missed change.
Each tick also keeps a Pod object per local pod (see podobjects), and every few seconds
the garbage collector removes kubeforge objects whose owners are gone (see gc), and, in
the local platform, PrometheusRules are loaded into its Prometheus (see rules).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from ...core import kube
from ...operators import labels, resources
from .. import monitoring
from . import deployments, endpoints, gc, jobs, pods, scrape, stored
from .executables import Executables
from .health import Health
from .podobjects import PodObjects
from .rules import RuleSync
from .snapshot import Snapshot
from .state import PodState, RunnerState, running

log = logging.getLogger(__name__)

COMPONENT = "kubeforge-local-runner"
MANAGED = "kubeforge-operator"
GPU = resources.GPU
NOT_RUN = f"not labelled {labels.MANAGED_BY}={MANAGED}: the local runtime only runs kubeforge's own workloads"
KINDS = (("batch/v1", "Job", jobs.sync), ("apps/v1", "Deployment", deployments.sync))
GC_INTERVAL = 5.0
RULES_INTERVAL = 2.0


def state_dir(data_dir: Path) -> Path:
    return data_dir / "runner"


def scrape_targets(data_dir: Path) -> Path:
    """The file_sd file of local pods that ask to be scraped (see scrape)."""
    return state_dir(data_dir) / "scrape-targets.json"


def _wants_gpu(spec: dict[str, Any]) -> bool:
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        resources = container.get("resources") or {}
        if GPU in {**(resources.get("limits") or {}), **(resources.get("requests") or {})}:
            return True
    return False


class Runner:
    """Plays kubelet and workload controllers for kubeforge-managed Jobs and Deployments."""

    def __init__(
        self,
        api: client.ApiClient,
        data_dir: Path,
        interval: float = 0.5,
        namespace_selector: str | None = None,
        listen_address: str = "127.0.0.1",
        prometheus_dir: Path | None = None,
    ):
        self.api = api
        self.health = Health()
        self.namespace_selector = namespace_selector  # None: every namespace
        self.dir = state_dir(data_dir)
        self.interval = interval
        self.state = RunnerState.load(self.dir)
        self.executables = Executables(listen_address)
        self.snapshot = Snapshot(api)
        self.pod_objects = PodObjects(api)
        self.next_gc = self.next_rules = 0.0
        self.rules = None
        if prometheus_dir is not None:
            folder = monitoring.cluster_rules(prometheus_dir)
            self.rules = RuleSync(folder, monitoring.address_file(prometheus_dir))
        self.stopping = threading.Event()

    def run(self) -> None:
        """Tick until SIGTERM/SIGINT; workloads keep running for the next runner to adopt."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        adopted = [c.pid for p in self.state.pods.values() for c in p.containers if running(c)]
        log.info("runner started; state in %s; adopted processes: %s", self.dir, adopted or "none")
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:  # an API server restart or a bad object must not end the runner
                log.exception("tick failed")
            self.health.beat = time.monotonic()
            self.stopping.wait(self.interval)
        self.state.save(self.dir)

    def tick(self) -> None:
        self.snapshot = Snapshot(self.api)
        seen = set()
        namespaces = None
        if self.namespace_selector:
            listed = client.CoreV1Api(self.api).list_namespace(label_selector=self.namespace_selector).items
            namespaces = {stored.name(ns) for ns in listed}
        templates: dict[str, dict[str, Any]] = {}
        for api_version, kind, sync in KINDS:
            for obj in kube.resource(self.api, api_version, kind).get().to_dict()["items"]:
                if namespaces is not None and obj["metadata"]["namespace"] not in namespaces:
                    continue
                obj.update(apiVersion=api_version, kind=kind)
                seen.add(obj["metadata"]["uid"])
                if obj["metadata"].get("labels", {}).get(labels.MANAGED_BY) != MANAGED:
                    self.warn_once(obj, "NotRunLocally", NOT_RUN)
                    continue
                templates[obj["metadata"]["uid"]] = obj["spec"]["template"]
                sync(self, obj)
        for pod in list(self.state.pods.values()):
            if pod.owner_uid not in seen:
                log.info("%s: owner deleted", pod.key)
                self.remove_pod(pod)
        self.pod_objects.sync(self, templates, namespaces)
        endpoints.publish(self.api, self.state.pods.values())
        scrape.publish(scrape_targets(self.dir.parent), self.state.pods.values())
        self.state.save(self.dir)
        if time.monotonic() >= self.next_gc:
            self.next_gc = time.monotonic() + GC_INTERVAL
            gc.collect(self.api, namespaces)
        if self.rules and time.monotonic() >= self.next_rules:
            self.next_rules = time.monotonic() + RULES_INTERVAL
            self.rules.sync(self.api, namespaces)

    def create_pod(
        self, owner: dict[str, Any], template: dict[str, Any], index: int = 0, indexed: bool = False
    ) -> PodState:
        meta = owner["metadata"]
        middle = index if owner["kind"] == "Job" else pods.template_hash(template)
        name = f"{meta['name']}-{middle}-{secrets.token_hex(3)}"
        pod = pods.new(meta["namespace"], name, meta["uid"], template, self.dir / "pods", index, indexed)
        pod.owner = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"]}
        self.state.pods[pod.key] = pod
        containers = [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]
        if any(
            GPU in {**r.get("limits", {}), **r.get("requests", {})}
            for r in (c.get("resources") or {} for c in containers)
        ):
            self.warn_once(owner, "GPUNotAvailableLocally", f"{GPU} requested: the pods run on CPU locally")
        log.info("%s: new pod for %s %s, logs in %s", pod.key, owner["kind"], meta["name"], pod.dir)
        return pod

    def remove_pod(self, pod: PodState) -> None:
        pods.stop(pod)
        self.state.pods.pop(pod.key, None)

    def step(self, pod: PodState, spec: dict[str, Any], restart: bool) -> None:
        pods.step(pod, spec, self.snapshot, self.executables, restart)

    def warn_once(self, obj: dict[str, Any], reason: str, message: str) -> None:
        key = f"{obj['metadata']['uid']}:{reason}"
        if key in self.state.warned:
            return
        kube.event(self.api, obj, "Warning", reason, message, component=COMPONENT)
        self.state.warned.append(key)


def stop_workloads(data_dir: Path) -> int:
    """Stop every process the runner started (for `kubeforge down`); returns how many pods had some."""
    state = RunnerState.load(state_dir(data_dir))
    stopped = 0
    for pod in list(state.pods.values()):
        stopped += any(running(c) for c in pod.containers)
        with contextlib.suppress(OSError):
            pods.stop(pod)
    state.save(state_dir(data_dir))
    return stopped

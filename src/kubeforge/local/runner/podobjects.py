"""Pod objects for local pods: what a kubelet reports, so `kubectl get pods` and the operators see them.

Each local pod gets a real Pod in the API server, bound to the node name ``kubeforge-local``,
with the template's labels and a controller reference to its Job or Deployment. Its status
is what a kubelet writes: phase, conditions and container statuses, with
``waiting.reason: CrashLoopBackOff`` while a crashed container backs off and
``lastState.terminated`` (exit code, termination message) for the run before. The operators
read failures from there, the same code as in a cluster.

Deleting a Pod works as on a node: the runner stops its processes and confirms the
deletion, and the Job or Deployment gets a new pod.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import stored
from .launch import LOOPBACK
from .pods import terminated
from .state import ContainerState, PodState

if TYPE_CHECKING:
    from .loop import Runner

log = logging.getLogger(__name__)

NODE = "kubeforge-local"
"""spec.nodeName of every local pod (no Node object: nothing schedules here)."""


def manifest(pod: PodState, template: dict[str, Any]) -> dict[str, Any]:
    """The Pod object of a local pod: the template bound to the local node, owned by the pod's controller."""
    owner = {**pod.owner, "uid": pod.owner_uid, "controller": True, "blockOwnerDeletion": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
            "ownerReferences": [owner] if pod.owner else [],
        },
        "spec": {**template["spec"], "nodeName": NODE},
    }


def _waiting(pod: PodState, c: ContainerState, restart: bool, now: float) -> dict[str, Any] | None:
    """The waiting state of a container that does not run, or None when it is terminated for good."""
    if c.exit_code is not None:
        if not restart or (c.init and c.exit_code == 0):
            return None
        seconds = max(0, round(c.not_before - now))
        message = f"back-off {seconds}s restarting failed container={c.name} pod={pod.name}"
        return {"reason": "CrashLoopBackOff", "message": message}
    if pod.message:
        return {"reason": "CreateContainerConfigError", "message": pod.message}
    initializing = not c.init and any(x.exit_code != 0 for x in pod.containers if x.init)
    return {"reason": "PodInitializing" if initializing else "ContainerCreating"}


def container_status(pod: PodState, c: ContainerState, image: str, restart: bool, now: float) -> dict[str, Any]:
    """One entry of containerStatuses / initContainerStatuses, as a kubelet writes it."""
    status: dict[str, Any] = {
        "name": c.name,
        "image": image,
        "imageID": "",
        "ready": c.ready,
        "restartCount": c.restarts,
        "started": c.pid is not None,
    }
    if c.pid is not None:
        status["state"] = {"running": {"startedAt": c.started_at}}
    elif (waiting := _waiting(pod, c, restart, now)) is not None:
        status["state"] = {"waiting": waiting}
    else:
        status["state"] = {"terminated": terminated(c)}
    last = terminated(c) if status["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff" else c.last_exit
    status["lastState"] = {"terminated": last} if last else {}
    return status


def pod_status(pod: PodState, spec: dict[str, Any], now: float) -> dict[str, Any]:
    """The Pod's status: phase, conditions, IPs and container statuses."""
    restart = spec.get("restartPolicy", "Always") != "Never"
    images = {c["name"]: c.get("image", "") for c in [*spec.get("initContainers", []), *spec["containers"]]}
    inits = [c for c in pod.containers if c.init]
    mains = [c for c in pod.containers if not c.init]
    initialized = all(c.exit_code == 0 for c in inits)
    ready = pod.ready

    def condition(type_: str, ok: bool) -> dict[str, Any]:
        return {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None}

    status: dict[str, Any] = {
        "phase": pod.phase,
        "hostIP": LOOPBACK,
        "podIP": LOOPBACK,
        "podIPs": [{"ip": LOOPBACK}],
        "startTime": pod.created,
        "conditions": [
            {**condition("PodScheduled", True), "lastTransitionTime": pod.created},
            condition("Initialized", initialized),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
        "containerStatuses": [container_status(pod, c, images.get(c.name, ""), restart, now) for c in mains],
    }
    if inits:
        status["initContainerStatuses"] = [
            container_status(pod, c, images.get(c.name, ""), restart, now) for c in inits
        ]
    status["message"] = pod.message or None  # None: a merge patch removes the last message
    return status


def _backoff_free(status: dict[str, Any]) -> dict[str, Any]:
    """status without the back-off countdown, which changes every second and is not worth a write."""
    out = dict(status)
    for key in ("containerStatuses", "initContainerStatuses"):
        out[key] = [
            {**c, "state": {"waiting": {**c["state"]["waiting"], "message": ""}}} if "waiting" in c["state"] else c
            for c in status.get(key, [])
        ]
    return out


class PodObjects:
    """Keeps a Pod object per local pod and writes its status when it changes."""

    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self.written: dict[str, dict[str, Any]] = {}  # pod key -> last status written (back-off countdown dropped)

    def sync(self, runner: Runner, templates: dict[str, dict[str, Any]], namespaces: set[str] | None) -> None:
        """Create, update and delete Pod objects to match the runner's pods.

        templates: owner uid -> pod template of the owner's current spec, for pods still to create.
        namespaces: the namespaces this runner serves (None: all).
        """
        listed = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}").items
        objects = {f"{stored.namespace(p)}/{stored.name(p)}": p for p in listed}
        now = time.time()
        for pod in list(runner.state.pods.values()):
            obj = objects.get(pod.key)
            if obj is not None and stored.meta(obj).deletion_timestamp:
                log.info("%s: Pod deleted; stopping it", pod.key)
                runner.remove_pod(pod)
                continue
            if obj is None and pod.published:
                log.info("%s: Pod object gone; stopping the pod", pod.key)
                runner.remove_pod(pod)
                continue
            template = templates.get(pod.owner_uid)
            if obj is None:
                if template is None:
                    continue
                try:
                    # The client declares a V1Pod; its validate_call makes one of the dict.
                    self.core.create_namespaced_pod(pod.namespace, manifest(pod, template))  # type: ignore[arg-type]
                except ApiException as err:
                    log.warning("%s: cannot create its Pod object: %s", pod.key, err.reason)
                    continue
                pod.published = True
            if template is not None:
                self._write_status(pod, template["spec"], now)
        for key, obj in objects.items():
            ns = stored.namespace(obj)
            if key not in runner.state.pods and (namespaces is None or ns in namespaces):
                self._delete(ns, stored.name(obj))
                self.written.pop(key, None)

    def _write_status(self, pod: PodState, spec: dict[str, Any], now: float) -> None:
        status = pod_status(pod, spec, now)
        comparable = _backoff_free(status)
        if self.written.get(pod.key) == comparable:
            return
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
        except ApiException as err:
            log.warning("%s: cannot write its Pod status: %s", pod.key, err.reason)
            return
        self.written[pod.key] = comparable

    def _delete(self, namespace: str, name: str) -> None:
        """Confirm a deletion as a kubelet does once the containers are gone: grace period 0."""
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as err:
            if err.status != 404:
                raise

"""The runner as a kubelet: Pod objects and their status, deletion, process trees, garbage collection."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from kubeforge.local.processes import alive
from kubeforge.local.runner.state import RunnerState
from tests.integration.local.test_runner import MANAGED, apply, available, endpoint, gateway, get, job, live
from tests.integration.operators.conftest import wait_for


def local_pods(runner, namespace: str) -> list:
    return [p for p in RunnerState.load(runner.data_dir / "runner").pods.values() if p.namespace == namespace]


def pods(kubectl, namespace: str) -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]


def crashing() -> dict:
    """A program whose input is missing: it exits with code 1 and says why, every time."""
    container = {
        "name": "main",
        "image": "kubeforge",
        "command": ["kubeforge", "train", "--spec", "/etc/kubeforge/missing.yaml"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    labels = {**MANAGED, "app": "crash"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "crash", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "crash"}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


@pytest.mark.timeout(120)
def test_crash_loop_is_reported_in_the_pod_status_as_a_kubelet_does(kubectl, runner, namespace):
    apply(kubectl, namespace, crashing())

    def backing_off() -> dict | None:
        for pod in pods(kubectl, namespace):
            [status] = pod.get("status", {}).get("containerStatuses") or [{}]
            if status.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff":
                return pod
        return None

    pod = wait_for(backing_off, 60, "a Pod in CrashLoopBackOff")
    assert pod["spec"]["nodeName"] == "kubeforge-local"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert pod["metadata"]["labels"]["app"] == "crash"
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] is False
    last = status["lastState"]["terminated"]
    assert last["exitCode"] == 1 and last["reason"] == "Error"
    assert "cannot read /etc/kubeforge/missing.yaml" in last["message"]  # the log's tail (FallbackToLogsOnError)
    wait_for(
        lambda: (
            get(kubectl, namespace, "pod", pod["metadata"]["name"])["status"]["containerStatuses"][0]["restartCount"]
            >= 1
        ),
        60,
        "a restart",
    )
    # What a user sees first (between restarts, while the back-off lasts).
    wait_for(lambda: "CrashLoopBackOff" in kubectl("get", "pods", "-n", namespace).stdout, 60, "kubectl get pods")


@pytest.mark.timeout(120)
def test_a_container_whose_wrapper_dies_goes_with_it_and_restarts_on_its_port(kubectl, runner, namespace):
    apply(kubectl, namespace, *gateway())
    wait_for(lambda: available(kubectl, namespace), 60, "Deployment Available")
    address = wait_for(lambda: endpoint(kubectl, namespace), what="ready EndpointSlice")
    [pod] = local_pods(runner, namespace)
    wrapper = pod.containers[0].pid
    children = subprocess.run(["pgrep", "-g", str(wrapper)], capture_output=True, text=True).stdout.split()
    server = next(int(p) for p in children if int(p) != wrapper)

    os.kill(wrapper, signal.SIGKILL)  # only the wrapper: the gateway it started is orphaned
    wait_for(lambda: not alive(server), 30, "the orphaned gateway to be stopped")
    wait_for(lambda: live(address), 60, "the restarted gateway on the same port")
    log = (runner.data_dir / "runner" / "pods" / namespace / pod.name / "gateway.log").read_text()
    assert "address already in use" not in log.lower()


@pytest.mark.timeout(120)
def test_deleting_a_pod_stops_it_and_the_deployment_gets_a_new_one(kubectl, runner, namespace):
    apply(kubectl, namespace, *gateway())
    wait_for(lambda: available(kubectl, namespace), 60, "Deployment Available")
    [before] = pods(kubectl, namespace)
    [pod] = local_pods(runner, namespace)
    pid = pod.containers[0].pid

    kubectl("delete", "pod", "-n", namespace, before["metadata"]["name"], "--wait=true", "--timeout=60s")
    assert not alive(pid)
    after = wait_for(
        lambda: [p for p in pods(kubectl, namespace) if p["metadata"]["name"] != before["metadata"]["name"]],
        30,
        "a replacement Pod",
    )
    assert len(after) == 1
    wait_for(lambda: available(kubectl, namespace), 60, "Deployment Available again")


@pytest.mark.timeout(120)
def test_objects_whose_owner_is_gone_are_garbage_collected(kubectl, runner, namespace):
    """The local runtime has no controller manager; the runner collects kubeforge's orphans as its GC would."""
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner = get(kubectl, namespace, "configmap", "owner")
    routes, deployment, service = gateway()
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    deployment["metadata"]["ownerReferences"] = [ref]
    apply(kubectl, namespace, routes, deployment, service, job("unowned", ["kubeforge", "version"]))
    wait_for(lambda: available(kubectl, namespace), 60, "Deployment Available")
    pid = next(c.pid for p in local_pods(runner, namespace) if p.name.startswith("gw-") for c in p.containers)
    wait_for(lambda: get(kubectl, namespace, "job", "unowned").get("status", {}).get("succeeded"), 60, "unowned done")

    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: "NotFound" in kubectl("get", "deployment", "gw", "-n", namespace, check=False).stderr, 30, "GC")
    wait_for(lambda: not alive(pid), 30, "its processes stopped")
    wait_for(lambda: not [p for p in pods(kubectl, namespace) if p["metadata"]["name"].startswith("gw-")], 30, "Pod")
    assert get(kubectl, namespace, "job", "unowned")  # objects without owners are never collected

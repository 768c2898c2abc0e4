"""The local workload runner against a real API server: Jobs, Deployments, endpoints, restarts."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from typing import Any

import pytest
import yaml

from kubeforge.local.processes import alive
from kubeforge.local.runner.state import RunnerState
from tests.integration.operators.conftest import wait_for

MANAGED = {"app.kubernetes.io/managed-by": "kubeforge-operator"}


def job(name: str, command: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "kubeforge",
        "command": command,
        "terminationMessagePath": "/dev/termination-log",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": MANAGED if labels is None else labels},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def apply(kubectl, namespace: str, *objs: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objs))


def get(kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), None)


def local_pids(runner, namespace: str) -> list[int]:
    state = RunnerState.load(runner.data_dir / "runner")
    return [c.pid for p in state.pods.values() if p.namespace == namespace for c in p.containers if c.pid]


def test_job_completes(kubectl, runner, namespace):
    apply(kubectl, namespace, job("ok", ["kubeforge", "version"]))
    done = wait_for(lambda: condition(get(kubectl, namespace, "job", "ok"), "Complete"), what="Job Complete")
    assert done["status"] == "True"
    status = get(kubectl, namespace, "job", "ok")["status"]
    assert status["succeeded"] == 1 and "completionTime" in status and "active" not in status


def test_failing_job_reports_exit_code_and_termination_message(kubectl, runner, namespace):
    # The spec arrives through a ConfigMap volume, and the trainer writes why it fails to its termination log.
    spec = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spec"}, "data": {"tj.yaml": "[1, 2]"}}
    bad = job("bad", ["kubeforge", "train", "--spec", "/etc/kubeforge/tj.yaml"])
    pod = bad["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] = [{"name": "spec", "mountPath": "/etc/kubeforge"}]
    pod["volumes"] = [{"name": "spec", "configMap": {"name": "spec"}}]
    apply(kubectl, namespace, spec, bad)
    failed = wait_for(lambda: condition(get(kubectl, namespace, "job", "bad"), "Failed"), 60, "Job Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "container main exited with code 1: --spec:" in failed["message"]
    assert "must hold a TrainingJob" in failed["message"]
    assert get(kubectl, namespace, "job", "bad")["status"]["failed"] == 1


def test_unlabelled_job_is_left_alone_with_an_event(kubectl, runner, namespace):
    apply(kubectl, namespace, job("foreign", ["kubeforge", "version"], labels={}))
    events = wait_for(
        lambda: kubectl("get", "events", "-n", namespace, "--field-selector", "reason=NotRunLocally").stdout.strip(),
        what="NotRunLocally event",
    )
    assert "job/foreign" in events
    assert not local_pids(runner, namespace)
    assert not get(kubectl, namespace, "job", "foreign").get("status")


def gateway(replicas: int = 1) -> list[dict[str, Any]]:
    """The inference gateway as the ModelDeployment operator deploys it: routes from a ConfigMap, port by name."""
    labels = {**MANAGED, "app": "gw"}
    container = {
        "name": "gateway",
        "image": "kubeforge",
        "command": ["kubeforge", "serving", "gateway"],
        "args": ["--routes", "/etc/routes/routes.yaml", "--port", "$(KUBEFORGE_PORT_HTTP)"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "KUBEFORGE_PORT_HTTP", "value": "8080"}],
        "volumeMounts": [{"name": "routes", "mountPath": "/etc/routes"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
    }
    pod = {"containers": [container], "volumes": [{"name": "routes", "configMap": {"name": "routes"}}]}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "routes"},
            "data": {"routes.yaml": "models: {}"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gw", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "gw"}},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gw"},
            "spec": {"selector": {"app": "gw"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


def endpoint(kubectl, namespace: str) -> str | None:
    """The Service's ready endpoint as host:port, from its EndpointSlices."""
    out = kubectl("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=gw", "-o", "json")
    for item in json.loads(out.stdout)["items"]:
        for ep in item["endpoints"]:
            if ep["conditions"].get("ready"):
                return f"{ep['addresses'][0]}:{item['ports'][0]['port']}"
    return None


def live(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/health/live", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def available(kubectl, namespace: str) -> bool:
    cond = condition(get(kubectl, namespace, "deployment", "gw"), "Available")
    return bool(cond and cond["status"] == "True")


@pytest.mark.timeout(240)
def test_deployment_serves_restarts_adopts_and_scales_to_zero(kubectl, runner, namespace):
    apply(kubectl, namespace, *gateway())
    wait_for(lambda: available(kubectl, namespace), 60, "Deployment Available")
    status = get(kubectl, namespace, "deployment", "gw")["status"]
    assert status["readyReplicas"] == status["availableReplicas"] == status["replicas"] == 1
    address = wait_for(lambda: endpoint(kubectl, namespace), what="ready EndpointSlice")
    assert address.startswith("127.0.0.1:") and live(address)

    # A crashed process is restarted on its port; the Service keeps pointing at it.
    [pid] = local_pids(runner, namespace)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: local_pids(runner, namespace) not in ([], [pid]), 30, "a restarted process")
    wait_for(lambda: live(address), 60, "the restarted gateway")

    # A restarted runner adopts the running process instead of starting a second one.
    [pid] = local_pids(runner, namespace)
    runner.stop()
    runner.start()
    wait_for(lambda: "adopted processes: [" in runner.log.read_text(), what="runner restart")
    assert local_pids(runner, namespace) == [pid] and alive(pid) and live(address)
    wait_for(lambda: available(kubectl, namespace), 10, "Deployment Available after adoption")
    assert local_pids(runner, namespace) == [pid]

    kubectl("scale", "-n", namespace, "deployment/gw", "--replicas=0")
    wait_for(lambda: not alive(pid) and not local_pids(runner, namespace), 30, "gateway stopped")
    wait_for(lambda: endpoint(kubectl, namespace) is None, what="endpoints withdrawn")

"""Status explains a failing pod: status.lastFailure, the Ready message and an Event.

There is no kubelet here: the tests create the Pods a Job or Deployment would get (the
template's labels, the controller reference) and write their status through the status
subresource as the kubelet reports a failing container.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_recreate import event_message
from tests.integration.operators.test_trainingjob_operator import condition, create_tj, mark_job, status
from tests.integration.serving.conftest import Threshold, register

pytestmark = pytest.mark.integration
GROUP, VERSION = "kubeforge.dev", "v1alpha1"

TRITON_LOG_TAIL = """\
I0101 10:00:00.100000 1 model_lifecycle.cc:469] loading: crashy:1
E0101 10:00:00.200000 1 model_lifecycle.cc:638] failed to load 'crashy' version 1: Not found: model.pt is missing
I0101 10:00:00.200100 1 model_lifecycle.cc:773] failed to load 'crashy'
I0101 10:00:00.300000 1 server.cc:305] Waiting for in-flight requests to complete.
I0101 10:00:00.300200 1 server.cc:336] All models are stopped, unloading models
error: creating server: Internal - failed to load all models
"""


def create_pod(api: client.ApiClient, namespace: str, name: str, owner: Any, container: str) -> None:
    """The Pod that owner's controller (a Job's or a Deployment's) would create from its template."""
    template = owner.spec.template
    is_job = isinstance(owner, client.V1Job)
    pod = {
        "metadata": {
            "name": name,
            "labels": template.metadata.labels,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1" if is_job else "apps/v1",
                    "kind": "Job" if is_job else "Deployment",
                    "name": owner.metadata.name,
                    "uid": owner.metadata.uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": template.spec.restart_policy or "Always",
            "containers": [{"name": container, "image": "example/image:1"}],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)


def kubelet_reports(
    api: client.ApiClient, namespace: str, pod: str, phase: str, container: dict[str, Any], **extra: Any
) -> None:
    container = {"image": "example/image:1", "imageID": "", "ready": False, "restartCount": 0, **container}
    body = {"status": {"phase": phase, "containerStatuses": [container], **extra}}
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, body)


def test_a_trainer_pod_that_cannot_start_then_exits_with_code_1_fills_last_failure(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "crashy", backoffLimit=1)
    job = wait_for(lambda: client.BatchV1Api(api).list_namespaced_job(namespace).items, what="Job crashy-a1")[0]
    create_pod(api, namespace, "crashy-a1-x7k2p", job, "trainer")
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "example/image:1"'}
    kubelet_reports(api, namespace, "crashy-a1-x7k2p", "Pending", {"name": "trainer", "state": {"waiting": waiting}})
    # The Job runs on: the operator notices on its next look at the unfinished TrainingJob.
    wait_for(lambda: status(api, namespace, "crashy").get("lastFailure"), 30, "lastFailure while pending")
    assert status(api, namespace, "crashy")["lastFailure"] == {
        "reason": "ImagePullBackOff",
        "container": "trainer",
        "pod": "crashy-a1-x7k2p",
        "message": 'Back-off pulling image "example/image:1"',
        "time": status(api, namespace, "crashy")["lastFailure"]["time"],
    }
    assert event_message(api, namespace, "crashy", "ImagePullBackOff").startswith(
        "pod crashy-a1-x7k2p: container trainer"
    )

    exited = {
        "exitCode": 1,
        "reason": "Error",
        "message": "spec.dataset.uri: cannot read /data/iris.csv: No such file or directory",
        "startedAt": "2026-01-01T10:00:00Z",
        "finishedAt": "2026-01-01T10:00:07Z",
    }
    kubelet_reports(api, namespace, "crashy-a1-x7k2p", "Failed", {"name": "trainer", "state": {"terminated": exited}})
    mark_job(api, namespace, "crashy-a1", "Failed", "Job has reached the specified backoff limit")
    wait_for(lambda: status(api, namespace, "crashy").get("attempts") == 2, 30, "the retry")
    assert status(api, namespace, "crashy")["lastFailure"] == {
        "reason": "Error",
        "container": "trainer",
        "pod": "crashy-a1-x7k2p",
        "exitCode": 1,
        "message": "spec.dataset.uri: cannot read /data/iris.csv: No such file or directory",
        "time": "2026-01-01T10:00:07Z",
    }
    running = condition(api, namespace, "crashy", "Running")["message"]
    assert "attempt 1 failed (container trainer Error, exit code 1: spec.dataset.uri: cannot read" in running
    assert event_message(api, namespace, "crashy", "Error") == (
        "pod crashy-a1-x7k2p: container trainer Error, exit code 1: "
        "spec.dataset.uri: cannot read /data/iris.csv: No such file or directory"
    )


@pytest.fixture(scope="module")
def crashy_model(mlflow) -> str:
    register(mlflow.url, "crashy", Threshold(0.0, 1.0))
    return "crashy"


def test_a_crash_looping_triton_fills_last_failure_and_the_ready_message(
    operator: Operator, api: client.ApiClient, namespace: str, crashy_model: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "crashy"},
        "spec": {"model": {"name": crashy_model, "version": 1}},
    }
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
    apps = client.AppsV1Api(api)
    named = "metadata.name=crashy-v1"
    triton = wait_for(lambda: apps.list_namespaced_deployment(namespace, field_selector=named).items, 30, "Triton")[0]
    create_pod(api, namespace, "crashy-v1-6d9f8-abcde", triton, "triton")
    crashed = {"exitCode": 1, "reason": "Error", "message": TRITON_LOG_TAIL, "finishedAt": "2026-01-01T10:00:01Z"}
    loop = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=triton"}
    triton_status = {
        "name": "triton",
        "restartCount": 3,
        "state": {"waiting": loop},
        "lastState": {"terminated": crashed},
    }
    kubelet_reports(api, namespace, "crashy-v1-6d9f8-abcde", "Running", triton_status)

    def md_status() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "crashy")
        return obj.get("status") or {}

    wait_for(lambda: md_status().get("lastFailure", {}).get("pod"), 30, "lastFailure")
    why = "failed to load 'crashy' version 1: Not found: model.pt is missing"
    assert md_status()["lastFailure"] == {
        "reason": "CrashLoopBackOff",
        "container": "triton",
        "pod": "crashy-v1-6d9f8-abcde",
        "exitCode": 1,
        "message": why,
        "time": "2026-01-01T10:00:01Z",
    }
    ready = next(c for c in md_status()["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForStable")
    assert ready["message"] == f"waiting for Triton of version 1: container triton CrashLoopBackOff, exit code 1: {why}"
    assert event_message(api, namespace, "crashy", "CrashLoopBackOff") == (
        f"pod crashy-v1-6d9f8-abcde: container triton CrashLoopBackOff, exit code 1: {why}"
    )

"""The TrainingJob operator as a real process against a real API server and MLflow.

There is no kubelet here, so pods never run: tests mark Jobs Complete or Failed
themselves through the Job status subresource, as envtest users do.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from kubernetes import client

from tests.integration.operators.conftest import Operator, wait_for

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "trainingjobs"


def create_tj(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": name, "architecture": "logistic"},
            "dataset": {"uri": "/data/iris.csv", "target": "species"},
            **spec,
        },
    }
    return client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_tj(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_tj(api, namespace, name).get("status") or {}


def condition(api: client.ApiClient, namespace: str, name: str, type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in status(api, namespace, name).get("conditions", []) if c["type"] == type_), {})


def jobs(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items)


def mark_job(api: client.ApiClient, namespace: str, job: str, type_: str, message: str = "") -> None:
    now = "2026-01-01T00:00:00Z"
    cond = {"type": type_, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "message": message}
    if type_ == "Failed":
        cond["reason"] = "BackoffLimitExceeded"
    body = {"status": {"conditions": [cond], **({"succeeded": 1} if type_ == "Complete" else {"failed": 1})}}
    client.BatchV1Api(api).patch_namespaced_job_status(job, namespace, body)


def event_reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [
        e.reason for e in sorted(items, key=lambda e: e.metadata.creation_timestamp) if e.involved_object.name == name
    ]


def test_creates_a_job_with_resources_env_and_owner(operator: Operator, api: client.ApiClient, namespace: str) -> None:
    tj = create_tj(
        api,
        namespace,
        "iris",
        resources={"cpu": "2", "memory": "3Gi", "gpus": 1},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    wait_for(lambda: jobs(api, namespace) == ["iris-a1"], what="Job iris-a1")
    job = client.BatchV1Api(api).read_namespaced_job("iris-a1", namespace)
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("TrainingJob", "iris", tj["metadata"]["uid"], True)
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits == {"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": "1"}
    env = {e.name: e.value for e in container.env}
    assert env["MLFLOW_TRACKING_URI"] == operator.mlflow_url
    assert env["KUBEFORGE_TRAININGJOB_NAME"] == "iris" and env["KUBEFORGE_TRAININGJOB_UID"] == tj["metadata"]["uid"]
    assert job.spec.template.spec.tolerations[0].key == "nvidia.com/gpu"
    cm = client.CoreV1Api(api).read_namespaced_config_map("iris-spec", namespace)
    assert "target: species" in cm.data["trainingjob.yaml"]
    wait_for(lambda: status(api, namespace, "iris").get("phase") == "Running", what="phase Running")
    assert status(api, namespace, "iris")["attempts"] == 1
    wait_for(lambda: "JobCreated" in event_reasons(api, namespace, "iris"), what="event JobCreated")


def test_failed_jobs_are_retried_then_the_trainingjob_fails_with_the_reason(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "flaky", backoffLimit=1)
    wait_for(lambda: jobs(api, namespace) == ["flaky-a1"], what="first attempt")
    mark_job(api, namespace, "flaky-a1", "Failed", "pod exited with code 3")
    wait_for(lambda: jobs(api, namespace) == ["flaky-a1", "flaky-a2"], what="second attempt")
    assert status(api, namespace, "flaky")["attempts"] == 2
    mark_job(api, namespace, "flaky-a2", "Failed", "pod exited with code 3")
    wait_for(lambda: status(api, namespace, "flaky").get("phase") == "Failed", what="phase Failed")
    ready = condition(api, namespace, "flaky")
    assert ready["status"] == "False" and ready["reason"] == "BackoffLimitExceeded"
    assert "pod exited with code 3" in ready["message"]
    assert condition(api, namespace, "flaky", "Failed")["status"] == "True"
    assert jobs(api, namespace) == ["flaky-a1", "flaky-a2"], "no third attempt"
    wait_for(
        lambda: "BackoffLimitExceeded" in event_reasons(api, namespace, "flaky"), what="event BackoffLimitExceeded"
    )
    assert event_reasons(api, namespace, "flaky").count("Retrying") == 1


def test_deleting_the_job_does_not_reset_the_retry_budget(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "deleted", backoffLimit=1)
    wait_for(lambda: jobs(api, namespace) == ["deleted-a1"], what="first attempt")
    client.BatchV1Api(api).delete_namespaced_job("deleted-a1", namespace, propagation_policy="Background")
    wait_for(lambda: jobs(api, namespace) == ["deleted-a2"], what="replacement attempt")
    client.BatchV1Api(api).delete_namespaced_job("deleted-a2", namespace, propagation_policy="Background")
    wait_for(lambda: status(api, namespace, "deleted").get("phase") == "Failed", what="phase Failed")
    assert status(api, namespace, "deleted")["attempts"] == 2
    assert jobs(api, namespace) == []


def test_suspend_stops_the_attempt_and_resume_restarts_it(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "pausable")
    wait_for(lambda: jobs(api, namespace) == ["pausable-a1"], what="first attempt")
    custom = client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "pausable", {"spec": {"suspend": True}})
    wait_for(lambda: status(api, namespace, "pausable").get("phase") == "Suspended", what="phase Suspended")
    wait_for(lambda: jobs(api, namespace) == [], what="Job removed while suspended")
    assert condition(api, namespace, "pausable", "Suspended")["status"] == "True"
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "pausable", {"spec": {"suspend": False}})
    wait_for(lambda: jobs(api, namespace) == ["pausable-a1"], what="Job back after resume")
    wait_for(lambda: status(api, namespace, "pausable").get("phase") == "Running", what="phase Running")
    assert status(api, namespace, "pausable")["attempts"] == 1, "suspend is not a failed attempt"


def test_invalid_spec_sets_ready_false_naming_the_field_and_creates_nothing(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "mismatch", dataset={"uri": "/data/iris.parquet", "format": "csv", "target": "species"})
    wait_for(lambda: condition(api, namespace, "mismatch").get("reason") == "InvalidSpec", what="InvalidSpec")
    ready = condition(api, namespace, "mismatch")
    assert ready["status"] == "False" and "spec.dataset.format" in ready["message"]
    wait_for(lambda: "InvalidSpec" in event_reasons(api, namespace, "mismatch"), what="event InvalidSpec")
    assert jobs(api, namespace) == []
    assert client.CoreV1Api(api).list_namespaced_config_map(namespace).items == []


def test_a_restarted_operator_creates_nothing_twice(operator: Operator, api: client.ApiClient, namespace: str) -> None:
    create_tj(api, namespace, "steady", backoffLimit=2)
    wait_for(lambda: jobs(api, namespace) == ["steady-a1"], what="first attempt")
    wait_for(lambda: status(api, namespace, "steady").get("phase") == "Running", what="phase Running")
    wait_for(lambda: "JobCreated" in event_reasons(api, namespace, "steady"), what="event JobCreated")
    before = get_tj(api, namespace, "steady")
    events_before = event_reasons(api, namespace, "steady")
    operator.stop()
    operator.start()
    create_tj(api, namespace, "marker")  # once the new operator handled this, it has seen "steady" too
    wait_for(lambda: status(api, namespace, "marker").get("phase") == "Running", what="new operator working")
    assert jobs(api, namespace) == ["marker-a1", "steady-a1"]
    after = get_tj(api, namespace, "steady")
    assert after["status"] == before["status"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "status rewritten"
    assert event_reasons(api, namespace, "steady") == events_before


def test_a_completed_job_fills_in_the_registered_version_from_mlflow(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow, tmp_path
) -> None:
    """The trainer runs here as the pod would (same spec file, same identity), then the Job is marked Complete."""
    import hashlib
    import subprocess
    import sys

    import yaml
    from sklearn.datasets import load_breast_cancer

    data = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_")).to_csv(data, index=False)
    tj = create_tj(
        api,
        namespace,
        "cancer",
        model={"name": f"cancer-{namespace}", "architecture": "logistic", "hyperparameters": {"epochs": 3}},
        dataset={"uri": str(data), "target": "target"},
        register={"alias": "candidate"},
    )
    wait_for(lambda: jobs(api, namespace) == ["cancer-a1"], what="Job cancer-a1")
    spec = client.CoreV1Api(api).read_namespaced_config_map("cancer-spec", namespace).data["trainingjob.yaml"]
    (tmp_path / "trainingjob.yaml").write_text(spec)
    assert yaml.safe_load(spec)["metadata"]["uid"] == tj["metadata"]["uid"]
    trained = subprocess.run(
        [sys.executable, "-m", "kubeforge.cli", "train", "--spec", str(tmp_path / "trainingjob.yaml")],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.strip().splitlines()[-1])["kubeforge.result"]
    mark_job(api, namespace, "cancer-a1", "Complete")
    wait_for(lambda: (status(api, namespace, "cancer").get("mlflow") or {}).get("modelVersion"), 60, "model version")
    st = status(api, namespace, "cancer")
    assert st["phase"] == "Succeeded"
    assert st["mlflow"] == {
        "runId": result["runId"],
        "modelVersion": result["modelVersion"],
        "modelUri": f"models:/cancer-{namespace}/{result['modelVersion']}",
    }
    assert st["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert st["dataset"] == {"uri": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "rows": 569}
    ready = condition(api, namespace, "cancer")
    assert ready["status"] == "True" and ready["reason"] == "ModelRegistered"
    wait_for(lambda: "ModelRegistered" in event_reasons(api, namespace, "cancer"), what="event ModelRegistered")


def test_a_trainingjob_past_its_deadline_fails_though_no_event_comes(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    """Its Job never runs here (no kubelet), so nothing but the operator's clock sees the deadline pass."""
    create_tj(api, namespace, "slow", activeDeadlineSeconds=3)
    wait_for(lambda: jobs(api, namespace) == ["slow-a1"], what="Job slow-a1")
    wait_for(lambda: status(api, namespace, "slow").get("phase") == "Failed", 45, "phase Failed past the deadline")
    assert condition(api, namespace, "slow")["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds=3 passed" in condition(api, namespace, "slow")["message"]
    wait_for(lambda: jobs(api, namespace) == [], 30, "the running attempt's Job deleted")
    assert "DeadlineExceeded" in event_reasons(api, namespace, "slow")


def test_a_running_trainingjob_costs_no_passes_until_something_happens(
    controlplane, mlflow, api: client.ApiClient, namespace: str, tmp_path
) -> None:
    """Hundreds of queued or running TrainingJobs must not keep the operator and the API server busy: the clock
    passes over none whose Job runs between events, and an event (its pod failing to start) still starts a pass.
    An operator watching only this namespace counts the passes, so other tests' objects do not."""
    from tests.integration.operators.test_last_failure import create_pod, kubelet_reports
    from tests.integration.operators.test_operator_metrics import value

    scoped = Operator(controlplane.kubeconfig, mlflow.url, tmp_path / "operator.log", ("--namespace", namespace))
    scoped.start()
    try:
        create_tj(api, namespace, "quiet")
        job = wait_for(lambda: client.BatchV1Api(api).list_namespaced_job(namespace).items, what="Job quiet-a1")[0]
        wait_for(lambda: status(api, namespace, "quiet").get("phase") == "Running", what="phase Running")

        def passes() -> float | None:
            return value(scoped, "kubeforge_reconcile_duration_seconds_count", kind="TrainingJob")

        time.sleep(3)  # the events of its own writes
        before = passes()
        time.sleep(21)  # two of the clock's 10-second looks after its 5 idle seconds
        assert passes() == before, "the clock passed over a TrainingJob that waits on its Job"

        create_pod(api, namespace, "quiet-a1-p4x2z", job, "trainer")
        waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "example/image:1"'}
        kubelet_reports(api, namespace, "quiet-a1-p4x2z", "Pending", {"name": "trainer", "state": {"waiting": waiting}})
        wait_for(lambda: status(api, namespace, "quiet").get("lastFailure"), 30, "lastFailure from the pod's event")
        assert status(api, namespace, "quiet")["lastFailure"]["reason"] == "ImagePullBackOff"
        assert (passes() or 0) > (before or 0)
    finally:
        scoped.stop()


def test_a_restarted_operator_passes_once_over_a_trainingjob_whatever_its_earlier_attempts_left(
    controlplane, crds_installed, mlflow, api: client.ApiClient, namespace: str, tmp_path
) -> None:
    """An operator that starts gets an event for every attempt's Job, often before their TrainingJob's own: a pass
    reads only the current attempt's, and the TrainingJob's first event's pass reads it. Before, each earlier
    attempt's Job cost a pass of its own (two requests each) on every restart."""
    from tests.integration.operators.test_operator_metrics import value

    def scoped() -> Operator:
        return Operator(controlplane.kubeconfig, mlflow.url, tmp_path / "operator.log", ("--namespace", namespace))

    first = scoped()
    first.start()
    try:
        create_tj(api, namespace, "thrice", backoffLimit=2)
        for attempt in (1, 2):
            wait_for(lambda a=attempt: f"thrice-a{a}" in jobs(api, namespace), what=f"attempt {attempt}")
            mark_job(api, namespace, f"thrice-a{attempt}", "Failed", "pod exited with code 3")
        wait_for(lambda: jobs(api, namespace) == ["thrice-a1", "thrice-a2", "thrice-a3"], what="attempt 3")
        wait_for(lambda: status(api, namespace, "thrice").get("attempts") == 3, what="attempt 3 in status")
    finally:
        first.stop()
    again = scoped()
    again.start()
    try:

        def passes() -> float:
            return value(again, "kubeforge_reconcile_duration_seconds_count", kind="TrainingJob") or 0.0

        wait_for(lambda: passes() >= 1, what="the restarted operator's first pass")
        time.sleep(3)  # every Job's event has come by now
        assert passes() == 1
        assert status(api, namespace, "thrice")["attempts"] == 3 and jobs(api, namespace)[-1] == "thrice-a3"
    finally:
        again.stop()


def test_a_trainingjob_carries_no_finalizer_so_deleting_it_never_waits_for_an_operator(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    """`kubectl delete` of a TrainingJob must not hang while the operator is down or uninstalled, and the operator
    writes nothing to a TrainingJob but its status: a finalizer would be two more writes, and two passes, each."""
    create_tj(api, namespace, "brief")
    wait_for(lambda: jobs(api, namespace) == ["brief-a1"], what="Job brief-a1")
    wait_for(lambda: status(api, namespace, "brief").get("phase") == "Running", what="phase Running")
    mark_job(api, namespace, "brief-a1", "Failed", "out of memory")
    wait_for(lambda: jobs(api, namespace) == ["brief-a1", "brief-a2"], what="attempt 2")
    operator.stop()
    try:
        assert not get_tj(api, namespace, "brief")["metadata"].get("finalizers")
        custom = client.CustomObjectsApi(api)
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "brief")
        wait_for(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"], 5)
    finally:
        operator.start()

"""The TrainingJob state machine and its Job builder, without a cluster."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeforge.core.kube import Capabilities
from kubeforge.core.mlflow_rest import ModelVersion
from kubeforge.operators.settings import Settings
from kubeforge.operators.training import plan as tplan
from kubeforge.operators.training.plan import plan, with_registration

SETTINGS = Settings("http://mlflow:5000", "trainer:1", "triton:1", "gateway:1", "http://prom:9090")
NEW = Capabilities(1, 30)
OLD = Capabilities(1, 20)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "iris", "architecture": "mlp"},
        "dataset": {"uri": "/data/iris.csv", "target": "species"},
    }
    base.update(spec)
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": base,
    }


def step(b: dict[str, Any], job: dict[str, Any] | None, now: datetime = T0, caps: Capabilities = NEW) -> tplan.Plan:
    p = plan(b, job, SETTINGS, caps, now)
    b["status"] = p.status
    return p


def job_with(condition: str | None, p: tplan.Plan) -> dict[str, Any]:
    job = copy.deepcopy(next(o for o in p.apply if o["kind"] == "Job"))
    if condition:
        job["status"] = {"conditions": [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]}
    return job


def ready(b: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in b["status"]["conditions"] if c["type"] == "Ready")


def test_first_reconcile_creates_spec_and_attempt_one() -> None:
    b = body(resources={"cpu": 2, "memory": "4Gi", "gpus": 1}, nodeSelector={"gpu": "a100"})
    p = step(b, None)
    kinds = [o["kind"] for o in p.apply]
    assert kinds == ["ConfigMap", "Job"]
    job = p.apply[1]
    assert job["metadata"]["name"] == "iris-a1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert pod["nodeSelector"] == {"gpu": "a100"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["KUBEFORGE_TRAININGJOB_UID"] == "uid-1"
    assert container["command"][:2] == ["kubeforge", "train"]
    assert b["status"]["phase"] == "Running" and b["status"]["attempts"] == 1
    assert [e[1] for e in p.events] == ["JobCreated"]


def test_multi_replica_is_an_indexed_job_with_rendezvous_service() -> None:
    b = body(replicas=3)
    p = step(b, None)
    svc = next(o for o in p.apply if o["kind"] == "Service")
    job = next(o for o in p.apply if o["kind"] == "Job")
    assert svc["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[0] == "torchrun" and "--nnodes=3" in cmd and "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert f"--master-addr=iris-a1-0.{svc['metadata']['name']}" in cmd


def test_multi_replica_on_an_old_cluster_is_refused_clearly() -> None:
    b = body(replicas=2)
    p = step(b, None, caps=OLD)
    assert p.apply == []
    assert ready(b)["reason"] == "UnsupportedByCluster"
    assert "spec.replicas" in ready(b)["message"] and "1.21" in ready(b)["message"]


def test_old_cluster_jobs_leave_out_newer_fields() -> None:
    job = next(o for o in step(body(), None, caps=OLD).apply if o["kind"] == "Job")
    assert "suspend" not in job["spec"] and "completionMode" not in job["spec"]


@pytest.mark.parametrize(
    ("dataset", "field"),
    [
        ({"uri": "/d/data.parquet", "format": "csv", "target": "y"}, "spec.dataset.format"),
        ({"uri": "/d/data.csv", "target": "y", "features": ["a", "y"]}, "spec.dataset.features"),
    ],
)
def test_semantic_errors_create_nothing_and_name_the_field(dataset: dict[str, Any], field: str) -> None:
    b = body(dataset=dataset)
    p = step(b, None)
    assert p.apply == []
    assert b["status"]["phase"] == "Failed"
    assert ready(b)["reason"] == "InvalidSpec" and field in ready(b)["message"]
    assert p.events and p.events[0][0] == "Warning"
    # The same state again: no second event.
    assert step(b, None).events == []


def test_schema_errors_from_a_client_that_skipped_validation_name_the_field() -> None:
    b = body(replicas=0)
    step(b, None)
    assert ready(b)["reason"] == "InvalidSpec" and "spec.replicas" in ready(b)["message"]


def test_failed_attempts_retry_until_the_budget_and_count_on_the_trainingjob() -> None:
    b = body(backoffLimit=1)
    p1 = step(b, None)
    p2 = step(b, job_with("Failed", p1))
    assert b["status"]["attempts"] == 2 and b["status"]["jobName"] == "iris-a2"
    assert [o["metadata"]["name"] for o in p2.apply if o["kind"] == "Job"] == ["iris-a2"]
    step(b, job_with("Failed", p2))
    assert b["status"]["phase"] == "Failed"
    assert ready(b)["reason"] == "BackoffLimitExceeded"
    assert "2 attempt(s) failed" in ready(b)["message"]


def test_deleting_the_job_does_not_reset_attempts() -> None:
    b = body(backoffLimit=0)
    step(b, None)
    step(b, None)  # the Job of attempt 1 vanished
    assert b["status"]["attempts"] == 1
    assert b["status"]["phase"] == "Failed" and ready(b)["reason"] == "JobDeleted"


def test_complete_job_succeeds_and_waits_for_registration() -> None:
    b = body()
    p = step(b, None)
    p = step(b, job_with("Complete", p))
    assert b["status"]["phase"] == "Succeeded" and p.needs_registration
    missing = with_registration(b["status"], None, "iris", "uid-1", T0)
    assert next(c for c in missing["conditions"] if c["type"] == "Ready")["reason"] == "RegistrationMissing"
    version = ModelVersion("iris", "3", "run9", "src", {"kubeforge.metric.accuracy": "0.97"})
    done = with_registration(b["status"], version, "iris", "uid-1", T0)
    assert done["mlflow"] == {"runId": "run9", "modelVersion": "3", "modelUri": "models:/iris/3"}
    assert done["metrics"] == {"accuracy": 0.97}
    assert next(c for c in done["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_suspend_deletes_the_job_and_resume_restarts_the_same_attempt() -> None:
    b = body()
    p = step(b, None)
    job = job_with(None, p)
    b["spec"]["suspend"] = True
    p = step(b, job)
    assert p.delete_jobs == ["iris-a1"] and b["status"]["phase"] == "Suspended"
    b["spec"]["suspend"] = False
    p = step(b, None)
    assert b["status"]["attempts"] == 1 and [o["metadata"]["name"] for o in p.apply if o["kind"] == "Job"] == [
        "iris-a1"
    ]


def test_deadline_covers_retries() -> None:
    b = body(activeDeadlineSeconds=60)
    p = step(b, None)
    assert job_with(None, p)["spec"]["activeDeadlineSeconds"] == 60
    p = step(b, job_with("Failed", p), now=T0 + timedelta(seconds=20))
    assert job_with(None, p)["spec"]["activeDeadlineSeconds"] == 40
    p = step(b, job_with(None, p), now=T0 + timedelta(seconds=61))
    assert b["status"]["phase"] == "Failed" and ready(b)["reason"] == "DeadlineExceeded"
    assert p.delete_jobs == ["iris-a2"]


def test_reconcile_is_idempotent() -> None:
    b = body()
    p = step(b, None)
    job = job_with(None, p)
    first = copy.deepcopy(step(b, job).status)
    again = step(b, job)
    assert again.status == first and again.events == [] and again.apply == []

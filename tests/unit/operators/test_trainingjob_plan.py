"""The TrainingJob state machine and its Job builder, without a cluster."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeforge.core import modelcontract as mc
from kubeforge.core.kube import APPLY_FAILED, DELETING_LEFTOVER, Capabilities, ChildNotApplied
from kubeforge.core.mlflow_rest import ModelVersion
from kubeforge.featurestore.config import StoreSettings
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


def step(
    b: dict[str, Any],
    job: dict[str, Any] | None,
    now: datetime = T0,
    caps: Capabilities = NEW,
    failure: dict[str, Any] | None = None,
    feature_view: dict[str, Any] | None = None,
    settings: Settings = SETTINGS,
) -> tplan.Plan:
    p = plan(b, job, settings, caps, now, failure, feature_view)
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


def test_a_dataset_token_reaches_the_trainer_from_its_secret_never_in_the_job() -> None:
    dataset = {"uri": "https://data.example/iris.csv", "target": "species", "tokenSecretRef": {"name": "data-api"}}
    (container,) = next(o for o in step(body(dataset=dataset), None).apply if o["kind"] == "Job")["spec"]["template"][
        "spec"
    ]["containers"]
    (token,) = (e for e in container["env"] if e["name"] == "KUBEFORGE_DATASET_TOKEN")
    assert token == {
        "name": "KUBEFORGE_DATASET_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "data-api", "key": "token"}},
    }


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
    tags = {"kubeforge.metric.accuracy": "0.97", mc.TAG_DATASET_URI: "s3://data/iris.csv", mc.TAG_DATASET_ROWS: "150"}
    version = ModelVersion("iris", "3", "run9", "src", {**tags, mc.TAG_DATASET_SHA256: "ab12"})
    done = with_registration(b["status"], version, "iris", "uid-1", T0)
    assert done["mlflow"] == {"runId": "run9", "modelVersion": "3", "modelUri": "models:/iris/3"}
    assert done["metrics"] == {"accuracy": 0.97}
    assert done["dataset"] == {"uri": "s3://data/iris.csv", "sha256": "ab12", "rows": 150}
    left_out = ModelVersion("iris", "4", "run10", "src", {**tags, mc.TAG_DATASET_ROWS_LEFT_OUT: "4"})
    assert with_registration(b["status"], left_out, "iris", "uid-1", T0)["dataset"]["rowsLeftOut"] == 4
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


def test_a_status_write_needs_no_pass_of_its_own_only_where_planning_again_from_it_leaves_it_as_is() -> None:
    b = body()
    p = step(b, None)
    assert not tplan.leaves_as_is(plan(b, None, SETTINGS, NEW, T0), b), "attempt 1's Job is not read yet"
    job = job_with(None, p)
    step(b, job)
    assert tplan.leaves_as_is(plan(b, job, SETTINGS, NEW, T0), b), "running, as written"
    later = plan(b, job, SETTINGS, NEW, T0 + timedelta(minutes=5))
    assert tplan.leaves_as_is(later, b), "time alone changes nothing"
    changed = copy.deepcopy(b)
    changed["metadata"]["generation"] = 2
    assert not tplan.leaves_as_is(plan(changed, job, SETTINGS, NEW, T0), changed), "a spec change is observed"
    done = job_with("Complete", p)
    step(b, done)
    assert not tplan.leaves_as_is(plan(b, done, SETTINGS, NEW, T0), b), "the registry lookup is still due"
    version = ModelVersion("iris", "3", "run9", "src", {})
    b["status"] = with_registration(b["status"], version, "iris", "uid-1", T0)
    assert tplan.leaves_as_is(plan(b, done, SETTINGS, NEW, T0), b), "registered: finished for good"


EXIT_1 = {
    "reason": "Error",
    "container": "trainer",
    "pod": "iris-a1-x7k2p",
    "exitCode": 1,
    "message": "spec.dataset.target: column 'species' not found in /data/iris.csv",
    "time": "2026-01-01T00:03:00Z",
}


def test_a_failed_attempt_is_explained_by_its_pod_in_last_failure_the_retry_message_and_one_event() -> None:
    b = body(backoffLimit=1)
    p = step(b, None)
    p = step(b, job_with("Failed", p), failure=EXIT_1)
    assert b["status"]["lastFailure"] == EXIT_1
    assert b["status"]["attempts"] == 2
    running = next(c for c in b["status"]["conditions"] if c["type"] == "Running")
    assert (
        "attempt 1 failed (container trainer Error, exit code 1: spec.dataset.target: column 'species'"
        in (running["message"])
    )
    assert [e[:2] for e in p.events] == [("Warning", "Error"), ("Warning", "Retrying")]
    assert p.events[0][2].startswith("pod iris-a1-x7k2p: container trainer Error, exit code 1")
    # The second attempt runs: the failure stays for reference, and is not announced again.
    p = step(b, job_with(None, p))
    assert b["status"]["lastFailure"] == EXIT_1 and p.events == []


def test_a_pod_that_does_not_start_is_reported_while_the_attempt_runs_once_per_failure() -> None:
    b = body()
    p = step(b, None)
    job = job_with(None, p)
    pull = {"reason": "ImagePullBackOff", "container": "trainer", "pod": "iris-a1-x", "message": "Back-off pulling"}
    p = step(b, job, now=T0 + timedelta(seconds=30), failure=pull)
    assert b["status"]["lastFailure"] == {**pull, "time": "2026-01-01T00:00:30Z"}
    assert b["status"]["phase"] == "Running"
    assert [e[1] for e in p.events] == ["ImagePullBackOff"]
    assert step(b, job, now=T0 + timedelta(seconds=60), failure=pull).events == []
    assert b["status"]["lastFailure"]["time"] == "2026-01-01T00:00:30Z"


def test_pods_are_read_only_when_they_may_explain_something() -> None:
    job = job_with(None, step(body(), None))
    assert not tplan.pods_worth_reading(None)
    assert tplan.pods_worth_reading({**job, "status": {"active": 1}}), "no ready count (before 1.23): read"
    assert tplan.pods_worth_reading({**job, "status": {"active": 1, "ready": 0}})
    assert not tplan.pods_worth_reading({**job, "status": {"active": 1, "ready": 1}}), "running well: no list"
    assert tplan.pods_worth_reading(job_with("Failed", step(body(), None)))
    assert not tplan.pods_worth_reading(job_with("Complete", step(body(), None)))


def test_children_that_cannot_be_applied_leave_the_status_pending_with_ready_false_and_one_event() -> None:
    b = body()
    err = ChildNotApplied(APPLY_FAILED, "applying Job iris-a1 failed (422 Unprocessable Entity): nodeSelector: invalid")
    status, events = tplan.not_applied(b, err, T0)
    b["status"] = status
    assert status["phase"] == "Pending" and "attempts" in status and "jobName" not in status
    assert ready(b)["status"] == "False" and ready(b)["reason"] == "ApplyFailed"
    assert "Job iris-a1" in ready(b)["message"] and "422" in ready(b)["message"]
    assert events == [("Warning", "ApplyFailed", err.message)]
    again, events = tplan.not_applied(b, err, T0 + timedelta(seconds=5))
    assert again == status and events == [], "the same failure again changes nothing"
    leftover = ChildNotApplied(DELETING_LEFTOVER, "Job iris-a1 belonged to an earlier TrainingJob iris")
    status, events = tplan.not_applied(b, leftover, T0 + timedelta(seconds=10))
    assert [e[1] for e in events] == ["DeletingLeftover"]
    assert leftover.retry_after(0) == leftover.retry_after(5) == 2.0, "a leftover is gone within moments"
    assert [err.retry_after(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_running_trainingjob_whose_next_attempt_cannot_be_applied_keeps_its_phase() -> None:
    b = body(backoffLimit=1)
    step(b, None)
    status, _ = tplan.not_applied(b, ChildNotApplied(APPLY_FAILED, "applying Job iris-a2 failed"), T0)
    assert status["phase"] == "Running" and status["attempts"] == 1


FEATURE_VIEW_DATASET = {"featureView": {"name": "spend", "entitiesUri": "/data/churn.parquet"}, "target": "churned"}


def feature_view(generation: int, registered: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "False", "reason": "Registering"}]}
    if registered is not None:
        status["registeredGeneration"] = registered
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "spend", "namespace": "ml", "uid": "fv-uid", "generation": generation},
        "spec": {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": "spend", "dtype": "Float64"}],
            "source": {"path": "/data/spend.parquet"},
        },
        "status": status,
    }


def test_a_missing_feature_view_keeps_the_trainingjob_pending_naming_the_field_until_it_exists() -> None:
    b = body(dataset=FEATURE_VIEW_DATASET)
    p = step(b, None)
    assert p.apply == []
    assert b["status"]["phase"] == "Pending" and "startTime" not in b["status"]
    assert ready(b)["reason"] == "FeatureViewNotFound"
    assert ready(b)["message"].startswith("spec.dataset.featureView.name: FeatureView 'spend' does not exist")
    assert [(e[0], e[1]) for e in p.events] == [("Warning", "FeatureViewNotFound")]
    assert step(b, None).events == []  # the timer's next pass: no second event

    p = step(b, None, feature_view=feature_view(3, 2))
    assert p.apply == [] and b["status"]["phase"] == "Pending"
    assert ready(b)["reason"] == "WaitingForFeatureView"
    assert "generation 3 of FeatureView 'spend'" in ready(b)["message"] and "Registering" in ready(b)["message"]

    p = step(b, None, now=T0 + timedelta(seconds=30), feature_view=feature_view(3, 3))
    assert [o["kind"] for o in p.apply] == ["ConfigMap", "Job"]
    assert b["status"]["attempts"] == 1 and b["status"]["phase"] == "Running"
    assert b["status"]["startTime"] == "2026-01-01T00:00:30Z"
    assert [e[1] for e in p.events] == ["JobCreated"]


def test_the_trainer_gets_the_feature_view_its_generation_and_the_feature_store() -> None:
    settings = dataclasses.replace(SETTINGS, feature_store=StoreSettings(Path("/features")), feature_store_pvc="feast")
    b = body(dataset=FEATURE_VIEW_DATASET, replicas=2)
    p = step(b, None, feature_view=feature_view(3, 3), settings=settings)
    configmap, job = p.apply[0], p.apply[-1]
    view = yaml.safe_load(configmap["data"]["featureview.yaml"])
    assert view["metadata"] == {"name": "spend", "namespace": "ml", "uid": "fv-uid", "generation": 3}
    assert view["spec"] == feature_view(3, 3)["spec"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][-5:] == [
        "kubeforge.training.main",
        "--spec",
        "/etc/kubeforge/trainingjob.yaml",
        "--featureview",
        "/etc/kubeforge/featureview.yaml",
    ]
    assert {e["name"]: e["value"] for e in container["env"]}["KUBEFORGE_FEAST_DIR"] == "/features"
    assert {"name": "feature-store", "mountPath": "/features"} in container["volumeMounts"]
    assert {"name": "feature-store", "persistentVolumeClaim": {"claimName": "feast"}} in pod["volumes"]


def test_a_retry_waits_for_a_deleted_feature_view_without_spending_an_attempt() -> None:
    b = body(dataset=FEATURE_VIEW_DATASET, backoffLimit=1)
    p = step(b, None, feature_view=feature_view(1, 1))
    step(b, job_with("Failed", p))  # the view was deleted meanwhile
    assert b["status"]["phase"] == "Pending" and ready(b)["reason"] == "FeatureViewNotFound"
    assert b["status"]["attempts"] == 2
    p = step(b, None, feature_view=feature_view(1, 1))
    assert b["status"]["attempts"] == 2 and b["status"]["phase"] == "Running"
    assert [o["metadata"]["name"] for o in p.apply if o["kind"] == "Job"] == ["iris-a2"]


def test_a_queued_attempt_waits_suspended_for_kueue_and_runs_at_the_priority_asked() -> None:
    b = body(queueName="team-a", priorityClassName="batch-low")
    p = step(b, None)
    job = job_with(None, p)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True, "created suspended: Kueue starts it on admission"
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"
    p = step(b, job, T0 + timedelta(seconds=5))
    assert b["status"]["phase"] == "Pending" and ready(b)["reason"] == "Queued"
    assert "Job iris-a1 is waiting in queue team-a for admission" in ready(b)["message"]
    assert [e[1] for e in p.events] == ["Queued"] and not p.apply, "the Job is not applied again over Kueue"
    assert not step(b, job, T0 + timedelta(seconds=10)).events, "one Event while it waits"
    job["spec"]["suspend"] = False  # admitted
    step(b, job, T0 + timedelta(seconds=15))
    assert b["status"]["phase"] == "Running"
    unqueued = job_with(None, step(body(), None))
    assert unqueued["spec"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in unqueued["metadata"]["labels"]


def test_a_queue_on_a_cluster_without_job_suspend_is_refused_naming_the_field() -> None:
    b = body(queueName="team-a")
    p = step(b, None, caps=OLD)
    assert not [o for o in p.apply if o["kind"] == "Job"]
    assert "spec.queueName" in ready(b)["message"] and "Kubernetes 1.21+" in ready(b)["message"]


def _ready(reason: str) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "False", "reason": reason, "message": "", "lastTransitionTime": ""}]


TICK = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "status, spec, due",
    [
        ({"phase": "Running", "startTime": "2026-01-01T10:00:00Z", "conditions": _ready("JobRunning")}, {}, False),
        ({"phase": "Pending", "conditions": _ready(tplan.QUEUED), "startTime": "2026-01-01T10:00:00Z"}, {}, False),
        ({"phase": "Running", "startTime": "2026-01-01T10:00:00Z"}, {"activeDeadlineSeconds": 90}, False),
        ({"phase": "Running", "startTime": "2026-01-01T09:58:00Z"}, {"activeDeadlineSeconds": 90}, True),
        ({"phase": "Pending", "conditions": _ready(tplan.WAITING_FOR_FEATUREVIEW)}, {}, True),
        ({"phase": "Pending", "conditions": _ready(tplan.FEATUREVIEW_NOT_FOUND)}, {}, True),
        ({"phase": "Succeeded", "mlflow": {}}, {}, True),
        ({"phase": "Succeeded", "mlflow": {"modelVersion": "3"}}, {}, False),
    ],
    ids=[
        "running",
        "queued",
        "deadline-ahead",
        "deadline-passed",
        "waiting-for-view",
        "view-missing",
        "unregistered",
        "registered",
    ],
)
def test_the_timer_works_only_for_what_no_event_will_bring(status: dict, spec: dict, due: bool) -> None:
    assert tplan.due_by_time(status, spec, TICK) is due

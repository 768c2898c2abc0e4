"""The FeatureView state machine and its materialization Job, without a cluster."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubeforge.featurestore.config import StoreSettings
from kubeforge.operators.featureview import plan as fplan
from kubeforge.operators.featureview.plan import Registration, plan
from kubeforge.operators.settings import Settings

SETTINGS = Settings(
    "http://mlflow:5000",
    "trainer:1",
    "triton:1",
    "gateway:1",
    "http://prom:9090",
    feature_store=StoreSettings(Path("/var/lib/features"), online="redis://redis:6379/0"),
    feature_store_pvc="features",
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OK = Registration()


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
        "features": [{"name": "spend", "dtype": "Float64"}],
        "source": {"path": "/data/spend.parquet"},
        "ttl": "1h",
        "materialization": {"interval": "10m"},
    }
    base.update(spec)
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "spend", "namespace": "shop", "uid": "uid-1", "generation": 1},
        "spec": base,
    }


def step(
    b: dict[str, Any],
    jobs: list[dict[str, Any]] | None = None,
    now: datetime = T0,
    registration: Registration | None = None,
    pods: list[dict[str, Any]] | None = None,
) -> fplan.Plan:
    if registration is None and fplan.needs_registration(b):
        registration = OK
    p = plan(b, registration, jobs or [], pods or [], SETTINGS, now)
    b["status"] = p.status
    return p


def finished(job: dict[str, Any], type_: str, at: datetime = T0) -> dict[str, Any]:
    job = copy.deepcopy(job)
    job["metadata"]["uid"] = f"job-{job['metadata']['name']}"
    job["status"] = {"conditions": [{"type": type_, "status": "True"}], "completionTime": at.isoformat()}
    return job


def pod(job: dict[str, Any], message: str) -> dict[str, Any]:
    terminated = {"exitCode": 0, "message": message}
    return {
        "metadata": {"name": f"{job['metadata']['name']}-0-abc", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
        "status": {"containerStatuses": [{"name": "materialize", "state": {"terminated": terminated}}]},
    }


def cond(b: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in b["status"]["conditions"] if c["type"] == type_)


RESULT = {
    "rows": 3,
    "onlineRows": 5,
    "windowStart": None,
    "windowEnd": "2026-01-01T00:00:10Z",
    "newestEventTime": "2025-12-31T23:50:00Z",
}


def materialized(b: dict[str, Any]) -> dict[str, Any]:
    """b after its first run succeeded; returns that run's finished Job."""
    p = step(b)
    job = finished(p.apply[0], "Complete")
    step(b, [job], T0 + timedelta(seconds=20), pods=[pod(job, json.dumps(RESULT))])
    return job


def test_first_pass_registers_and_starts_run_one() -> None:
    b = body()
    p = step(b)
    assert b["status"]["registeredGeneration"] == 1
    assert [e[1] for e in p.events] == ["Registered", "MaterializationStarted"]
    [job] = p.apply
    assert job["metadata"]["name"] == "spend-mat-1"
    assert job["metadata"]["labels"]["kubeforge.dev/featureview"] == "spend"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["kubeforge", "features", "materialize-job"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["KUBEFORGE_FEATUREVIEW_SPEC"])["source"]["path"] == "/data/spend.parquet"
    assert env["KUBEFORGE_FEAST_ONLINE_STORE"] == "redis://redis:6379/0"
    assert container["volumeMounts"] == [{"name": "feature-store", "mountPath": "/var/lib/features"}]
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "features"}
    assert b["status"]["lastMaterialization"] == {
        "job": "spend-mat-1",
        "generation": 1,
        "phase": "Running",
        "startTime": "2026-01-01T00:00:00Z",
    }
    assert (cond(b)["status"], cond(b)["reason"]) == ("False", "WaitingForMaterialization")
    assert cond(b, "Materializing")["status"] == "True"


def test_a_running_job_is_left_alone_and_the_status_stays_as_it_is() -> None:
    b = body()
    p = step(b)
    before = copy.deepcopy(b["status"])
    again = step(b, [p.apply[0]], T0 + timedelta(minutes=30))
    assert again.apply == [] and again.events == []
    assert b["status"] == before


def test_success_reports_rows_window_and_freshness() -> None:
    b = body()
    materialized(b)
    s = b["status"]
    assert s["lastMaterializedTime"] == "2026-01-01T00:00:10Z"
    assert s["onlineRows"] == 5 and s["newestEventTime"] == "2025-12-31T23:50:00Z"
    assert "freshnessSeconds" not in s  # its age changes with the clock: kubectl and the metric compute it
    assert s["lastMaterialization"]["phase"] == "Succeeded" and s["lastMaterialization"]["rows"] == 3
    assert (cond(b)["status"], cond(b)["reason"]) == ("True", "Materialized")
    assert (cond(b, "Stale")["status"], cond(b, "Materializing")["reason"]) == ("False", "Idle")


def test_metrics_see_each_finished_run_once() -> None:
    b = body()
    p = step(b)
    job = finished(p.apply[0], "Complete")
    first = step(b, [job], T0, pods=[pod(job, json.dumps(RESULT))])
    assert first.finished == ("succeeded", 3)
    assert step(b, [job], T0, pods=[pod(job, json.dumps(RESULT))]).finished is None


def test_next_run_is_due_an_interval_after_the_last_started() -> None:
    b = body()
    job = materialized(b)
    assert step(b, [job], T0 + timedelta(minutes=9)).apply == []
    p = step(b, [job], T0 + timedelta(minutes=10))
    assert [j["metadata"]["name"] for j in p.apply] == ["spend-mat-2"]
    assert "due every 10m" in p.events[-1][2]


def test_annotation_asks_for_one_run_also_while_suspended() -> None:
    b = body(materialization={"interval": "10m", "suspend": True})
    p = step(b)
    assert p.apply == [] and cond(b)["reason"] == "MaterializationSuspended"
    assert "materialize-now" in cond(b)["message"]
    b["metadata"]["annotations"] = {fplan.MATERIALIZE_NOW: "1"}
    p = step(b)
    assert [j["metadata"]["name"] for j in p.apply] == ["spend-mat-1"]
    assert b["status"]["materializeNow"] == "1"
    job = finished(p.apply[0], "Complete")
    assert step(b, [job], pods=[pod(job, json.dumps(RESULT))]).apply == []  # answered; suspended otherwise
    assert step(b, [job], T0 + timedelta(hours=5)).apply == []


def test_new_generation_runs_at_once() -> None:
    b = body()
    job = materialized(b)
    b["metadata"]["generation"] = 2
    p = step(b, [job], T0 + timedelta(minutes=1))
    assert [j["metadata"]["name"] for j in p.apply] == ["spend-mat-2"]
    assert b["status"]["registeredGeneration"] == 2


def test_schema_mismatch_in_a_run_names_the_column() -> None:
    b = body()
    p = step(b)
    job = finished(p.apply[0], "Failed")
    message = "spec.features[0].dtype: column 'spend' is not in /data/spend.parquet (columns: ['amount'])"
    p = step(b, [job], pods=[pod(job, json.dumps({"reason": "SchemaMismatch", "message": message}))])
    assert (cond(b)["status"], cond(b)["reason"]) == ("False", "SchemaMismatch")
    assert "column 'spend'" in cond(b)["message"] and "spend-mat-1" in cond(b)["message"]
    assert ("Warning", "SchemaMismatch") in [e[:2] for e in p.events]
    assert p.finished == ("failed", 0)


def test_a_crash_reports_the_tail_of_the_log() -> None:
    b = body()
    p = step(b)
    job = finished(p.apply[0], "Failed")
    log = "\n".join([*(f"line {i}" for i in range(20)), "sqlite3.OperationalError: disk I/O error"])
    step(b, [job], pods=[pod(job, log)])
    assert cond(b)["reason"] == "MaterializationFailed"
    assert cond(b)["message"].endswith("sqlite3.OperationalError: disk I/O error")
    assert "line 16" in cond(b)["message"] and "line 15" not in cond(b)["message"]


def test_a_run_killed_at_its_memory_limit_names_the_field_to_raise() -> None:
    b = body()
    job = finished(step(b).apply[0], "Failed")
    killed = pod(job, "materializing spend: 2,000,000 rows")
    killed["status"]["containerStatuses"][0]["state"]["terminated"].update(exitCode=137, reason="OOMKilled")
    p = step(b, [job], pods=[killed])
    assert cond(b)["reason"] == "MaterializationFailed"
    assert "killed at its memory limit; raise spec.materialization.memory" in cond(b)["message"]
    assert p.finished == ("failed", 0)


def test_a_deleted_job_counts_as_a_failed_run() -> None:
    b = body()
    step(b)
    step(b, [])
    assert cond(b)["reason"] == "MaterializationFailed" and "spend-mat-1 was deleted" in cond(b)["message"]


def test_a_result_not_on_the_pod_yet_is_waited_for_then_given_up_on() -> None:
    b = body()
    job = finished(step(b).apply[0], "Complete")
    assert fplan.read_result(job, [], T0 + timedelta(seconds=5)) is None
    step(b, [job], T0 + timedelta(seconds=5))
    assert b["status"]["lastMaterialization"]["phase"] == "Running"
    step(b, [job], T0 + timedelta(minutes=1))
    assert b["status"]["lastMaterialization"]["phase"] == "Succeeded"
    assert b["status"]["lastMaterializedTime"] == "2026-01-01T00:00:00Z"


def test_registration_problems_and_invalid_specs_are_named() -> None:
    b = body()
    missing = "spec.source.path: /data/spend.parquet does not exist"
    p = step(b, registration=Registration("SourceNotFound", missing))
    assert p.apply == [] and "registeredGeneration" not in b["status"]
    assert (cond(b)["reason"], cond(b)["message"]) == ("SourceNotFound", missing)
    assert p.events == [("Warning", "SourceNotFound", missing)]
    again = step(b, registration=Registration("SourceNotFound", missing))
    assert again.events == []  # events mark transitions only

    bad = body(ttl="soon")
    step(bad)
    assert cond(bad)["reason"] == "InvalidSpec" and "spec.ttl" in cond(bad)["message"]


def test_stale_when_the_newest_value_is_older_than_the_ttl() -> None:
    b = body()
    job = materialized(b)
    p = step(b, [job], T0 + timedelta(minutes=5))
    assert cond(b, "Stale")["status"] == "False" and p.events == []
    late = T0 + timedelta(minutes=55)
    p = step(b, [job], late)
    assert cond(b, "Stale")["status"] == "True" and ("Warning", "OlderThanTTL") in [e[:2] for e in p.events]


def test_a_view_between_runs_writes_nothing_as_its_values_age() -> None:
    b = body(materialization={"interval": "10h"})
    job = materialized(b)
    before = copy.deepcopy(b["status"])
    for seconds in (25, 35, 600):
        p = step(b, [job], T0 + timedelta(seconds=seconds))
        assert p.apply == [] and p.events == []
        assert b["status"] == before


def test_a_status_write_needs_no_pass_of_its_own_only_where_planning_again_from_it_leaves_it_as_is() -> None:
    b = body()
    assert not fplan.leaves_as_is(b, [], SETTINGS, T0), "not registered yet"
    [job] = step(b).apply  # registered, run 1 started
    assert fplan.leaves_as_is(b, [job], SETTINGS, T0), "its Job created, as written"
    assert not fplan.leaves_as_is(b, [], SETTINGS, T0), "without the Job it created, the run would count as failed"
    assert fplan.leaves_as_is(b, [job], SETTINGS, T0 + timedelta(minutes=5)), "time alone changes nothing"
    done = finished(job, "Complete")
    assert not fplan.leaves_as_is(b, [done], SETTINGS, T0), "a finished run's result is still to be read"
    step(b, [done], T0 + timedelta(seconds=20), pods=[pod(done, json.dumps(RESULT))])
    assert fplan.leaves_as_is(b, [done], SETTINGS, T0 + timedelta(seconds=20)), "its result recorded"
    assert not fplan.leaves_as_is(b, [done], SETTINGS, T0 + timedelta(minutes=10)), "the next run is due"
    edited = copy.deepcopy(b)
    edited["metadata"]["generation"] = 2
    assert not fplan.leaves_as_is(edited, [done], SETTINGS, T0), "a spec change is registered"
    failed = body()
    step(failed, registration=Registration(fplan.REGISTRATION_FAILED, "the database is down"))
    assert not fplan.leaves_as_is(failed, [], SETTINGS, T0), "a failed registration is tried again"


def due(b: dict[str, Any], now: datetime) -> bool:
    return fplan.due_by_time(b, now)


def test_the_clock_passes_only_for_what_no_event_brings() -> None:
    b = body()
    assert due(b, T0), "the first registration is tried by the clock too"
    failed = Registration(fplan.REGISTRATION_FAILED, "the database is down")
    step(b, registration=failed)
    assert due(b, T0 + timedelta(seconds=10)), "a failed registration is tried again"
    assert step(b).apply
    assert not due(b, T0 + timedelta(hours=5)), "a running Job's end comes as its event"

    every_10m = body()
    materialized(every_10m)  # run 1 started at T0
    assert not due(every_10m, T0 + timedelta(minutes=9))
    assert due(every_10m, T0 + timedelta(minutes=10))

    rare = body(materialization={"interval": "10h"})
    job = materialized(rare)  # its newest value is from 23:50, and the ttl is 1h
    assert not due(rare, T0 + timedelta(minutes=49))
    assert due(rare, T0 + timedelta(minutes=51)), "the newest value passed the ttl: Stale is due"
    step(rare, [job], T0 + timedelta(minutes=51))
    assert cond(rare, "Stale")["status"] == "True"
    assert not due(rare, T0 + timedelta(minutes=52)), "once Stale, only a new run changes anything"

    suspended = body(materialization={"interval": "10m", "suspend": True})
    assert step(suspended).apply == []
    assert not due(suspended, T0 + timedelta(hours=1)), "a suspended view waits for an edit or the annotation"

    invalid = body(ttl="soon")
    step(invalid)
    assert not due(invalid, T0 + timedelta(hours=1)), "an invalid spec waits for an edit"


def test_old_finished_jobs_are_deleted_keeping_the_newest_three() -> None:
    b = body()
    jobs = []
    for n in range(1, 6):
        now = T0 + timedelta(minutes=10 * (n - 1))
        p = step(b, jobs, now)
        assert [j["metadata"]["name"] for j in p.apply] == [f"spend-mat-{n}"]
        jobs.append(finished(p.apply[0], "Complete", now))
        p = step(b, jobs, now, pods=[pod(jobs[-1], json.dumps(RESULT))])
    assert p.delete_jobs == ["spend-mat-1", "spend-mat-2"]


def test_long_names_are_refused() -> None:
    b = body()
    b["metadata"]["name"] = "x" * 60
    step(b)
    assert cond(b)["reason"] == "InvalidSpec" and "metadata.name" in cond(b)["message"]

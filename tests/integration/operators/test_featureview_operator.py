"""The FeatureView operator as a real process against a real API server and real Feast.

Materialization Jobs run for real: the local runner runs them as processes on this
machine, writing to the operator's store directory, and the tests read the values back
from the online store the way a client would.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeforge.featurestore.config import StoreSettings
from tests.conftest import Kubectl
from tests.integration.operators.conftest import Operator, wait_for

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "featureviews"
FIRST_RUN = 300.0  # the operator's first Feast import and a Job's own, on a busy 2-core machine


def write_source(path: Path, **renamed: str) -> Path:
    """Customers 1 and 2 with values 5 and 10 minutes old; customer 3's is 3 hours old, past a 1h ttl."""
    now = datetime.now(UTC)
    data = {
        "customer_id": [1, 2, 3, 1],
        "spend": [1.5, 2.0, 3.0, 0.5],
        "event_timestamp": [now - timedelta(minutes=m) for m in (5, 10, 180, 30)],
    }
    pd.DataFrame({renamed.get(k, k): v for k, v in data.items()}).to_parquet(path)
    return path


def create_fv(api: client.ApiClient, namespace: str, name: str, path: Path, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FeatureView",
        "metadata": {"name": name},
        "spec": {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": "spend", "dtype": "Float64"}],
            "source": {"path": str(path)},
            "ttl": "1h",
            "materialization": {"interval": "1h"},
            **spec,
        },
    }
    return client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def condition(api: client.ApiClient, namespace: str, name: str, type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in status(api, namespace, name).get("conditions", []) if c["type"] == type_), {})


def annotate(api: client.ApiClient, namespace: str, name: str, value: str) -> None:
    patch = {"metadata": {"annotations": {"kubeforge.dev/materialize-now": value}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)


def jobs(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items)


def events(api: client.ApiClient, namespace: str, name: str) -> list[tuple[str, str]]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [(e.type, e.reason) for e in items if e.involved_object.name == name]


def run_finished(api: client.ApiClient, namespace: str, name: str, run: int) -> str | None:
    last = status(api, namespace, name).get("lastMaterialization") or {}
    return last.get("phase") if last.get("job") == f"{name}-mat-{run}" and last.get("phase") != "Running" else None


def test_materializes_serves_online_and_leaves_the_registry_when_deleted(
    operator: Operator, api: client.ApiClient, runner_namespace: str, kubectl: Kubectl, tmp_path: Path
) -> None:
    ns = runner_namespace
    create_fv(api, ns, "spend", write_source(tmp_path / "spend.parquet"))
    wait_for(lambda: condition(api, ns, "spend").get("status") == "True", FIRST_RUN, "Ready=True")
    s = status(api, ns, "spend")
    assert s["registeredGeneration"] == 1 and s["materializations"] == 1
    assert s["lastMaterialization"]["phase"] == "Succeeded" and s["lastMaterialization"]["rows"] == 2
    assert s["onlineRows"] == 2  # customer 3's value is older than the ttl
    newest = datetime.fromisoformat(s["newestEventTime"].replace("Z", "+00:00"))
    assert timedelta(minutes=5) <= datetime.now(UTC) - newest < timedelta(minutes=15)
    assert condition(api, ns, "spend", "Stale")["status"] == "False"
    assert [e for e in events(api, ns, "spend") if e[0] == "Warning"] == []

    from kubeforge.featurestore.store import Store

    store = Store(StoreSettings(operator.feast_dir), ns)
    assert store.registered("spend")
    values = store.online("spend", ["spend"], {"customer_id": [1, 2, 3]}, 3600)
    assert values.rows == [[1.5], [2.0], [None]]

    table = kubectl("get", "fv", "spend", "-n", ns).stdout
    assert "READY" in table.splitlines()[0] and "FRESHNESS" in table.splitlines()[0]
    assert "True" in table.splitlines()[1]
    metrics = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text
    labels = f'featureview="spend",namespace="{ns}"'  # the exposition sorts labels by name
    assert f'kubeforge_materializations_total{{{labels},result="succeeded"}} 1.0' in metrics
    assert f"kubeforge_materialized_rows_total{{{labels}}} 2.0" in metrics
    age = f"kubeforge_featureview_freshness_seconds{{{labels}}} "
    assert 5 * 60 <= float(next(x for x in metrics.splitlines() if x.startswith(age)).split()[-1]) < 15 * 60

    annotate(api, ns, "spend", "once-more")
    assert wait_for(lambda: run_finished(api, ns, "spend", 2), FIRST_RUN, "run 2") == "Succeeded"
    assert status(api, ns, "spend")["materializeNow"] == "once-more"
    assert jobs(api, ns) == ["spend-mat-1", "spend-mat-2"]
    job = client.BatchV1Api(api).read_namespaced_job("spend-mat-2", ns).spec.template.spec.containers[0]
    assert job.resources.requests == job.resources.limits == {"cpu": "1", "memory": "2Gi"}  # the defaults

    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "spend")

    def gone() -> bool:
        try:
            status(api, ns, "spend")
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, 60, "the finalizer to finish")
    assert not Store(StoreSettings(operator.feast_dir), ns).registered("spend")

    # Re-created under the same name, it starts again at run 1, with a Job of its own.
    uid = create_fv(api, ns, "spend", tmp_path / "spend.parquet")["metadata"]["uid"]
    assert wait_for(lambda: run_finished(api, ns, "spend", 1), FIRST_RUN, "run 1 again") == "Succeeded"
    job = client.BatchV1Api(api).read_namespaced_job("spend-mat-1", ns)
    assert job.metadata.owner_references[0].uid == uid
    wait_for(lambda: jobs(api, ns) == ["spend-mat-1"], 60, "the predecessor's Jobs to be collected")


def test_bad_sources_get_conditions_that_name_the_problem(
    operator: Operator, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    create_fv(api, namespace, "missing", tmp_path / "nowhere.parquet")
    create_fv(api, namespace, "renamed", write_source(tmp_path / "renamed.parquet", spend="amount"))
    wrong = tmp_path / "wrong.parquet"
    write_source(wrong)
    create_fv(api, namespace, "wrong", wrong, features=[{"name": "spend", "dtype": "Int64"}])
    expected = {
        "missing": ("SourceNotFound", f"spec.source.path: {tmp_path / 'nowhere.parquet'} does not exist"),
        "renamed": ("SchemaMismatch", "spec.features[0].dtype: column 'spend' is not in"),
        "wrong": ("SchemaMismatch", "column 'spend' holds floating values, not Int64"),
    }
    for name, (reason, text) in expected.items():
        cond = wait_for(
            lambda n=name, r=reason: (c := condition(api, namespace, n)) and c["reason"] == r and c,
            FIRST_RUN,
            f"{name} Ready=False {reason}",
        )
        assert cond["status"] == "False", cond
        assert text in cond["message"]
        # The event follows the status write that recorded the transition.
        wait_for(lambda n=name, r=reason: ("Warning", r) in events(api, namespace, n), 30, f"{name} {reason} event")
    assert jobs(api, namespace) == []

    # Fixing the source is picked up without touching the FeatureView.
    write_source(tmp_path / "nowhere.parquet")
    wait_for(lambda: status(api, namespace, "missing").get("registeredGeneration") == 1, 60, "registration")


def test_a_failing_run_reports_the_column_and_the_next_run_recovers(
    operator: Operator, api: client.ApiClient, runner_namespace: str, tmp_path: Path
) -> None:
    ns = runner_namespace
    path = write_source(tmp_path / "spend.parquet")
    sized = {"interval": "1h", "suspend": True, "cpu": "500m", "memory": "1Gi"}
    create_fv(api, ns, "spend", path, materialization=sized)
    wait_for(lambda: condition(api, ns, "spend").get("reason") == "MaterializationSuspended", FIRST_RUN, "suspended")
    assert jobs(api, ns) == []

    write_source(path, spend="amount")  # the column is renamed after the view was registered
    annotate(api, ns, "spend", "1")
    assert wait_for(lambda: run_finished(api, ns, "spend", 1), FIRST_RUN, "run 1") == "Failed"
    job = client.BatchV1Api(api).read_namespaced_job("spend-mat-1", ns).spec.template.spec.containers[0]
    assert job.resources.requests == job.resources.limits == {"cpu": "500m", "memory": "1Gi"}
    cond = condition(api, ns, "spend")
    assert (cond["status"], cond["reason"]) == ("False", "SchemaMismatch")
    assert "spend-mat-1" in cond["message"] and "column 'spend' is not in" in cond["message"]

    write_source(path)
    annotate(api, ns, "spend", "2")
    assert wait_for(lambda: run_finished(api, ns, "spend", 2), FIRST_RUN, "run 2") == "Succeeded"
    assert condition(api, ns, "spend")["status"] == "True"


def test_a_view_whose_job_runs_costs_no_passes_until_the_job_ends(
    controlplane, crds_installed, mlflow, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Views between runs or waiting on their Job must not keep the operator, its log and the API server busy: the
    timer passes over neither, and the Job's end still starts a pass at once. An operator watching only this
    namespace, where no runner runs Jobs, counts the passes, so other tests' views do not."""
    from tests.integration.operators.test_operator_metrics import value
    from tests.integration.operators.test_trainingjob_operator import mark_job

    scoped = Operator(controlplane.kubeconfig, mlflow.url, tmp_path / "operator.log", ("--namespace", namespace))
    scoped.start()
    try:
        create_fv(api, namespace, "quiet", write_source(tmp_path / "quiet.parquet"))

        def passes() -> float:
            return value(scoped, "kubeforge_reconcile_duration_seconds_count", kind="FeatureView") or 0

        # The session's operator, if one runs, may get there first: this one's first pass imports Feast.
        wait_for(lambda: passes() >= 1, FIRST_RUN, "the scoped operator's first pass")
        wait_for(lambda: condition(api, namespace, "quiet", "Materializing").get("status") == "True", FIRST_RUN)
        time.sleep(3)  # the events of its own writes
        before = passes()
        time.sleep(21)  # two of the timer's 10-second intervals
        assert passes() == before, "the timer passed over a view that waits on its Job"

        mark_job(api, namespace, "quiet-mat-1", "Failed", "the node went away")
        wait_for(lambda: run_finished(api, namespace, "quiet", 1), 30, "the run's end from the Job's event")
        assert condition(api, namespace, "quiet")["reason"] == "MaterializationFailed"
        assert "the node went away" in condition(api, namespace, "quiet")["message"]
        assert passes() > before
        # Nor does every event and timer tick leave a line in its log.
        assert not re.search(r"(Handler|Timer) '\w+' succeeded", scoped.log_text())
    finally:
        scoped.stop()


def test_a_job_deleted_by_hand_mid_run_fails_the_run_and_the_next_one_starts(
    operator: Operator, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    # No runner runs Jobs in this namespace: run 1 stays running until its Job is deleted.
    create_fv(api, namespace, "dropped", write_source(tmp_path / "dropped.parquet"))

    def running() -> bool:
        return condition(api, namespace, "dropped", "Materializing").get("status") == "True"

    wait_for(running, FIRST_RUN, "run 1 started")
    client.BatchV1Api(api).delete_namespaced_job("dropped-mat-1", namespace, propagation_policy="Background")
    assert wait_for(lambda: run_finished(api, namespace, "dropped", 1), 30, "run 1's end") == "Failed"
    cond = condition(api, namespace, "dropped")
    assert (cond["status"], cond["reason"]) == ("False", "MaterializationFailed")
    assert "Job dropped-mat-1 was deleted before it finished" in cond["message"]
    assert condition(api, namespace, "dropped", "Materializing")["status"] == "False"
    wait_for(lambda: ("Warning", "MaterializationFailed") in events(api, namespace, "dropped"), 30, "the event")

    annotate(api, namespace, "dropped", "again")
    wait_for(lambda: "dropped-mat-2" in jobs(api, namespace), 30, "run 2's Job")
    wait_for(running, 30, "run 2 started")

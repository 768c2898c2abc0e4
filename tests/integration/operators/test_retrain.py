"""spec.retrain against the real API server and operator: a scheduled retrain creates its TrainingJob once,
a failed one stops retraining, and a TrainingJob an earlier operator created is taken over, not duplicated.

A six-field cron ("every 10 seconds") keeps the schedule tests short. No kubelet runs here: the retrain's
Job is marked failed through its status, as envtest users do. The drift and accuracy triggers read the
gateway's gauges; they are covered by the unit tests of the decision, the accuracy trigger over two real gateway
replicas by test_gateway_replicas.py, and both by the demo's end-to-end run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from kubeforge.api.retrain import Retrain
from kubeforge.operators.deployment import retrain as rt
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_operator_metrics import create_md, md_status, value
from tests.integration.operators.test_trainingjob_operator import PLURAL as TJ_PLURAL
from tests.integration.operators.test_trainingjob_operator import create_tj, event_reasons, jobs, mark_job

pytestmark = pytest.mark.integration
GROUP, VERSION = "kubeforge.dev", "v1alpha1"
EVERY_10S = "* * * * * */10"


def retrains(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, TJ_PLURAL, label_selector=rt.RETRAIN_OF
    )
    return sorted(found["items"], key=lambda o: o["metadata"]["name"])


def retraining(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    conditions = md_status(api, namespace, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == rt.CONDITION), {})


def policy(**extra: Any) -> dict[str, Any]:
    return {"trainingJob": {"name": "template"}, "triggers": {"schedule": EVERY_10S}, "cooldown": "1h", **extra}


def test_a_scheduled_retrain_runs_once_per_cooldown_and_a_failed_one_stops_retraining(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "template", backoffLimit=0, register={"alias": "candidate"})
    create_md(api, namespace, "churn", model={"name": "not-registered", "version": 1}, retrain=policy())
    made = wait_for(lambda: retrains(api, namespace), 40, "the scheduled retrain")
    assert len(made) == 1
    tj = made[0]
    name = tj["metadata"]["name"]
    assert name.startswith("churn-retrain-") and tj["metadata"]["labels"][rt.TRIGGER] == "schedule"
    assert tj["spec"]["register"] == {"alias": "candidate"}, "the template's spec, copied"
    assert tj["metadata"]["ownerReferences"][0]["name"] == "churn"
    last = wait_for(lambda: md_status(api, namespace, "churn").get("lastRetrain"), 30, "status.lastRetrain")
    assert (last["trigger"], last["trainingJob"]) == ("schedule", name)
    wait_for(lambda: "RetrainStarted" in event_reasons(api, namespace, "churn"), 30, "event RetrainStarted")

    # Its Job fails (backoffLimit 0): the TrainingJob fails, and no retrain follows, whatever the schedule says.
    wait_for(lambda: f"{name}-a1" in jobs(api, namespace), 30, "the retrain's Job")
    mark_job(api, namespace, f"{name}-a1", "Failed", "trainer exited with code 3")
    failed = wait_for(
        lambda: (c := retraining(api, namespace, "churn")).get("reason") == rt.FAILED and c, 60, "RetrainFailed"
    )
    assert f"kubectl delete trainingjob {name}" in failed["message"]
    assert (
        value(operator, "kubeforge_modeldeployment_retrain_failed", namespace=namespace, modeldeployment="churn") == 1
    )
    wait_for(lambda: "RetrainFailed" in event_reasons(api, namespace, "churn"), 30, "event RetrainFailed")
    decided = [(h["action"], h["reason"]) for h in md_status(api, namespace, "churn").get("history") or []]
    assert [d for d in decided if d[0] == "Retrain"] == [("Retrain", rt.STARTED), ("Retrain", rt.FAILED)], decided
    time.sleep(25)  # two scheduled times and two operator passes go by
    assert [o["metadata"]["name"] for o in retrains(api, namespace)] == [name], "a failed retrain does not loop"

    # Deleted, it stops holding retraining back; the cooldown (1h since it started) still does.
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, TJ_PLURAL, name)
    cooling = wait_for(
        lambda: (c := retraining(api, namespace, "churn")).get("reason") == rt.COOLING_DOWN and c, 60, "CoolingDown"
    )
    assert "next may start at" in cooling["message"]
    assert retrains(api, namespace) == []


def test_a_retrain_an_earlier_operator_created_is_taken_over_not_created_again(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    """The operator died after creating the TrainingJob and before writing status: the next one finds it by its
    name and label, records it, and creates nothing."""
    create_tj(api, namespace, "template")
    operator.stop()
    try:
        create_md(api, namespace, "fraud", model={"name": "not-registered", "version": 1}, retrain=policy())
        custom = client.CustomObjectsApi(api)
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "fraud")
        name = rt.retrain_name("fraud", datetime.fromtimestamp(time.time() // 10 * 10, UTC))
        template = {
            "model": {"name": "m", "architecture": "logistic"},
            "dataset": {"uri": "/data/x.csv", "target": "y"},
        }
        body = rt.training_job(md, Retrain.model_validate(policy()), template, (name, "schedule", None), None)
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, TJ_PLURAL, body)
    finally:
        operator.start()
    last = wait_for(lambda: md_status(api, namespace, "fraud").get("lastRetrain"), 30, "status.lastRetrain")
    assert last["trainingJob"] == name
    time.sleep(12)  # the next scheduled time goes by: in flight, and in its cooldown
    assert [o["metadata"]["name"] for o in retrains(api, namespace)] == [name]
    assert retraining(api, namespace, "fraud")["reason"] == rt.RUNNING


def test_a_template_that_does_not_exist_is_named_in_the_condition(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_md(api, namespace, "lost", model={"name": "not-registered", "version": 1}, retrain=policy())
    found = wait_for(
        lambda: (c := retraining(api, namespace, "lost")).get("reason") == rt.TEMPLATE_NOT_FOUND and c,
        30,
        "TemplateNotFound",
    )
    assert "spec.retrain.trainingJob.name: TrainingJob template not found" in found["message"]
    assert retrains(api, namespace) == []

"""spec.policy.requireApproval against the real API server, operator and MLflow, decided with `kubeforge model`.

No kubelet runs here: Triton Deployments are marked available through their status subresource and their
Services get the EndpointSlices the local runner would publish (nothing listens at those addresses), and the
versions are registered in a real MLflow without artifacts (nothing loads them). What is checked is what
the operator decides: which versions get a Triton and a share of traffic, the conditions, the history and
the Events, while the ModelDeployment itself is never touched after it is created.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner, Result
from kubernetes import client, config
from mlflow import MlflowClient

from kubeforge.cli import main
from kubeforge.core import approval, kube
from kubeforge.local.runner import endpoints
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_operator_metrics import PLURAL, create_md, mark_available, md_status

pytestmark = pytest.mark.integration
GROUP, VERSION = "kubeforge.dev", "v1alpha1"


def kubeforge(mlflow, *argv: str) -> Result:
    """`kubeforge ARGV` against the test session's MLflow, as a user runs it."""
    return CliRunner().invoke(main, list(argv), env={"MLFLOW_TRACKING_URI": mlflow.url}, catch_exceptions=False)


def condition(api: client.ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in md_status(api, namespace, name).get("conditions") or [] if c["type"] == type_), {})


def tritons(api: client.ApiClient, namespace: str) -> set[str]:
    return {d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items}


def events(api: client.ApiClient, namespace: str, name: str) -> list[tuple[str, str]]:
    found = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [(e.reason, e.message) for e in found if e.involved_object.name == name]


def serve(api: client.ApiClient, namespace: str, name: str, version: str) -> None:
    """Mark version's Triton available and publish its address, as the local runner would for a serving pod."""
    wait_for(lambda: f"{name}-v{version}" in tritons(api, namespace), 30, f"the Triton of version {version}")
    mark_available(api, namespace, f"{name}-v{version}", 1)
    selector = f"metadata.name={name}-v{version}"
    core = client.CoreV1Api(api)
    # Applied after the Deployment by the same pass, so it may not be there yet.
    found = wait_for(lambda: core.list_namespaced_service(namespace, field_selector=selector).items, 30, selector)
    (service,) = found
    api_version = endpoints.api_version(api)
    body = {
        "apiVersion": api_version,
        "kind": "EndpointSlice",
        "metadata": {
            "name": service.metadata.name,
            "labels": {**service.metadata.labels, endpoints.SERVICE_NAME: service.metadata.name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 18000 + int(version), "protocol": "TCP"}],
    }
    kube.resource(api, api_version, "EndpointSlice").create(body=body, namespace=namespace)


def generation(api: client.ApiClient, namespace: str, name: str) -> tuple[int, str]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj["metadata"]["generation"], obj["spec"]


def test_a_version_rolls_out_only_once_approved_and_a_rejected_one_is_withdrawn(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow, controlplane
) -> None:
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    model = f"gated-{namespace}"  # registered models are global; namespaces are unique
    registry.create_registered_model(model)
    for _ in range(2):
        registry.create_model_version(model, source="s3://models/none")
    registry.set_registered_model_alias(model, "champion", "1")
    registry.set_registered_model_alias(model, "candidate", "2")
    assert kubeforge(mlflow, "model", "approve", model, "1", "--by", "carol").exit_code == 0
    canary = {"model": {"name": model, "alias": "candidate"}, "steps": [{"weight": 50, "pause": "1h"}]}
    spec = {"model": {"name": model, "alias": "champion"}, "canary": canary, "policy": {"requireApproval": True}}
    create_md(api, namespace, "gated", **spec)

    # Version 2 waits: no Triton, no traffic, and the condition says what to run.
    waiting = wait_for(
        lambda: (
            condition(api, namespace, "gated", "Approved").get("reason") == "AwaitingApproval"
            and condition(api, namespace, "gated", "Approved")
        ),
        60,
        "Approved=False AwaitingApproval",
    )
    assert f"version 2 of {model} awaits approval before it becomes canary" in waiting["message"]
    assert f'run `kubeforge model approve {model} 2 --note "..."`' in waiting["message"]
    serve(api, namespace, "gated", "1")
    stable_only = [{"version": "1", "role": "stable", "percent": 100}]
    wait_for(lambda: md_status(api, namespace, "gated").get("traffic") == stable_only, 30, "version 1 routed")
    assert "canaryVersion" not in md_status(api, namespace, "gated")
    assert tritons(api, namespace) == {"gated-gateway", "gated-v1"}
    assert condition(api, namespace, "gated", "Progressing")["reason"] == "AwaitingApproval"
    before = generation(api, namespace, "gated")

    # Approved with the command: the rollout proceeds by itself.
    kubeconfig = str(controlplane.kubeconfig)
    done = kubeforge(mlflow, "model", "approve", model, "2", "--note", "offline eval ok", "--kubeconfig", kubeconfig)
    assert done.exit_code == 0, done.output
    user = config.list_kube_config_contexts(config_file=kubeconfig)[1]["context"]["user"]
    assert f"version 2 of {model} approved by {user} at " in done.output
    tags = registry.get_model_version(model, "2").tags
    assert (tags[approval.TAG], tags[approval.TAG_BY], tags[approval.TAG_NOTE]) == ("approved", user, "offline eval ok")
    serve(api, namespace, "gated", "2")
    split = [{"version": "1", "role": "stable", "percent": 50}, {"version": "2", "role": "canary", "percent": 50}]
    wait_for(lambda: md_status(api, namespace, "gated").get("traffic") == split, 30, "the canary at 50%")
    assert generation(api, namespace, "gated") == before, "the ModelDeployment was not touched"
    assert condition(api, namespace, "gated", "Approved")["status"] == "True"
    assert f"approved by {user}" in condition(api, namespace, "gated", "Promoted")["message"]

    # Rejected mid-rollout: all traffic back to version 1, and the condition says who and why.
    done = kubeforge(mlflow, "model", "reject", model, "2", "--note", "drops recall", "--by", "bob")
    assert done.exit_code == 0 and "(it was approved by" in done.output, done.output
    wait_for(lambda: "canaryVersion" not in md_status(api, namespace, "gated"), 30, "the canary withdrawn")
    st = md_status(api, namespace, "gated")
    assert st["traffic"] == stable_only
    rejected = condition(api, namespace, "gated", "Approved")
    assert rejected["reason"] == "Rejected"
    assert (
        f"version 2 of {model} was rejected by bob at " in rejected["message"]
        and '"drops recall"' in rejected["message"]
    )
    wait_for(lambda: tritons(api, namespace) == {"gated-gateway", "gated-v1"}, 30, "the canary's Triton removed")

    # The history and the Events tell the story.
    actions = [(h["action"], h.get("version"), h["reason"]) for h in st["history"]]
    assert actions == [
        ("Select", "1", "StableSelected"),
        ("AwaitApproval", "2", "AwaitingApproval"),
        ("Start", "2", "CanaryStarted"),
        ("Step", "2", "StepAdvanced"),
        ("Withdraw", "2", "Rejected"),
    ]
    reasons = {"AwaitingApproval", "StableSelected", "CanaryStarted", "StepAdvanced", "Rejected"}
    wait_for(lambda: reasons <= {r for r, _ in events(api, namespace, "gated")}, 30, f"Events {reasons}")
    assert generation(api, namespace, "gated") == before


def test_deciding_about_a_version_or_model_that_does_not_exist_names_what_does(mlflow) -> None:
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    registry.create_registered_model("decided")
    for _ in range(2):
        registry.create_model_version("decided", source="s3://models/none")

    done = kubeforge(mlflow, "model", "approve", "decided", "7")
    assert done.exit_code == 1
    assert "registered model 'decided' has no version 7; its versions: 2, 1" in done.output
    done = kubeforge(mlflow, "model", "reject", "no-such-model", "1")
    assert done.exit_code == 1
    assert "registered model 'no-such-model' does not exist in MLflow; registered models: " in done.output
    assert "decided" in done.output
    assert kubeforge(mlflow, "model", "approve", "decided", "latest").exit_code == 1

    # A rejected version is approved only with --force.
    assert kubeforge(mlflow, "model", "reject", "decided", "2", "--by", "bob", "--note", "leaks labels").exit_code == 0
    done = kubeforge(mlflow, "model", "approve", "decided", "2", "--by", "alice")
    assert done.exit_code == 1
    assert "version 2 of decided was rejected by bob at " in done.output and "--force" in done.output
    assert registry.get_model_version("decided", "2").tags[approval.TAG] == "rejected"
    done = kubeforge(mlflow, "model", "approve", "decided", "2", "--by", "alice", "--force")
    assert done.exit_code == 0, done.output
    tags = registry.get_model_version("decided", "2").tags
    assert (tags[approval.TAG], tags[approval.TAG_BY], tags[approval.TAG_NOTE]) == ("approved", "alice", "")

    done = CliRunner().invoke(
        main, ["model", "approve", "decided", "2"], env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    )
    assert done.exit_code == 1 and "cannot record the decision in MLflow at http://127.0.0.1:9" in done.output

"""Children in the way: a deleted predecessor's leftovers, and objects the API server refuses.

A resource re-created under a deleted one's name finds the old children where the garbage
collector has not removed them yet (the local control plane has none; in a cluster the
re-create can race it). The operator must neither reuse them nor hang: it deletes them,
says so, and creates its own. Whatever else the API server refuses shows up as
``Ready=False`` with the object and the server's words, and an Event.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import yaml
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.core import kube
from kubeforge.local.runner import endpoints
from kubeforge.operators.deployment.children import ROUTES_FILE, routes_name
from kubeforge.operators.deployment.versions import RESOLVE_TTL
from kubeforge.operators.labels import MODEL_RUN
from kubeforge.training.baseline import compute
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_approval import serve
from tests.integration.operators.test_operator_metrics import value
from tests.integration.operators.test_trainingjob_operator import (
    GROUP,
    PLURAL,
    VERSION,
    condition,
    create_tj,
    event_reasons,
    jobs,
    mark_job,
    status,
)
from tests.integration.serving.conftest import FEATURES, N_FEATURES, Threshold, register, signature

pytestmark = pytest.mark.integration
MD_PLURAL = "modeldeployments"


def owner_uid(obj: Any) -> str:
    return next(ref.uid for ref in obj.metadata.owner_references if ref.controller)


def job_owner(api: client.ApiClient, namespace: str, name: str) -> str | None:
    """uid of the Job's controller; None while there is no such Job."""
    found = client.BatchV1Api(api).list_namespaced_job(namespace, field_selector=f"metadata.name={name}").items
    return owner_uid(found[0]) if found else None


def events(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    """reason -> message of the Events about the object called name."""
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return {e.reason: e.message for e in items if e.involved_object.name == name}


def event_message(api: client.ApiClient, namespace: str, name: str, reason: str) -> str:
    """The message of the Event with this reason, waited for: the operator posts it after the status write."""
    wait_for(lambda: reason in events(api, namespace, name), 30, f"event {reason} about {name}")
    return events(api, namespace, name)[reason]


def test_a_trainingjob_recreated_over_its_predecessors_leftovers_gets_fresh_children_and_runs(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    old = create_tj(api, namespace, "again")
    wait_for(lambda: jobs(api, namespace) == ["again-a1"], what="the first TrainingJob's Job")
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again")
    mark_job(api, namespace, "again-a1", "Failed", "old attempt failed")
    # As `kubectl delete` does, wait until it is gone.
    wait_for(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"], 30, "gone")
    # No garbage collector here: the Job and the spec ConfigMap outlive their TrainingJob.
    assert job_owner(api, namespace, "again-a1") == old["metadata"]["uid"]

    new = create_tj(api, namespace, "again")
    uid = new["metadata"]["uid"]
    wait_for(lambda: job_owner(api, namespace, "again-a1") == uid, 30, "a Job owned by the new uid")
    wait_for(lambda: status(api, namespace, "again").get("phase") == "Running", what="phase Running")
    st = status(api, namespace, "again")
    assert st["attempts"] == 1, "the predecessor's failed Job did not count against the new TrainingJob"
    assert not (batch.read_namespaced_job("again-a1", namespace).status.conditions or [])
    assert owner_uid(core.read_namespaced_config_map("again-spec", namespace)) == uid
    assert uid in core.read_namespaced_config_map("again-spec", namespace).data["trainingjob.yaml"]
    leftover = event_message(api, namespace, "again", "DeletingLeftover")
    assert "Job again-a1" in leftover and "ConfigMap again-spec" in leftover and old["metadata"]["uid"] in leftover
    # It progresses as any TrainingJob does.
    mark_job(api, namespace, "again-a1", "Complete")
    wait_for(lambda: status(api, namespace, "again").get("phase") == "Succeeded", what="phase Succeeded")


def test_a_job_the_api_server_refuses_shows_ready_false_and_an_event_until_the_spec_is_fixed(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    create_tj(api, namespace, "refused", nodeSelector={"gpu type": "a100"})  # not a valid label key
    wait_for(lambda: condition(api, namespace, "refused").get("reason") == "ApplyFailed", what="ApplyFailed")
    st = status(api, namespace, "refused")
    ready = condition(api, namespace, "refused")
    assert st["phase"] == "Pending" and ready["status"] == "False"
    assert "applying Job refused-a1 failed (422" in ready["message"]
    assert "nodeSelector" in ready["message"] and "gpu type" in ready["message"], "the API server's words"
    assert event_message(api, namespace, "refused", "ApplyFailed") == ready["message"]
    assert jobs(api, namespace) == []
    patch = {"spec": {"nodeSelector": {"gpu type": None, "gpu-type": "a100"}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "refused", patch)
    wait_for(lambda: status(api, namespace, "refused").get("phase") == "Running", what="phase Running once fixed")
    assert jobs(api, namespace) == ["refused-a1"]
    assert event_reasons(api, namespace, "refused").count("ApplyFailed") == 1, "one event per transition"


@pytest.fixture(scope="module")
def served_model(mlflow) -> str:
    """A registered version the operator can resolve (no pod runs here, so nothing loads it)."""
    register(mlflow.url, "in-the-way", Threshold(0.0, 1.0))
    return "in-the-way"


def create_md(api: client.ApiClient, namespace: str, name: str, model: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": model, "version": 1}, **spec},
    }
    return client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, MD_PLURAL, body)


def md_ready(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, MD_PLURAL, name)
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def test_a_modeldeployment_takes_no_leftover_over_but_replaces_it(
    operator: Operator, api: client.ApiClient, namespace: str, served_model: str
) -> None:
    core = client.CoreV1Api(api)
    earlier = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": "lefty"}
    leftover = {
        "metadata": {
            "name": "lefty-gateway",
            "labels": {"app": "from-before"},
            "ownerReferences": [{**earlier, "uid": "7b3c1e52-0000-4000-8000-000000000001", "controller": True}],
        },
        "spec": {"ports": [{"name": "old", "port": 9999, "protocol": "TCP"}], "selector": {"app": "from-before"}},
    }
    core.create_namespaced_service(namespace, leftover)
    uid = create_md(api, namespace, "lefty", served_model)["metadata"]["uid"]

    def gateway_owner() -> str | None:
        found = core.list_namespaced_service(namespace, field_selector="metadata.name=lefty-gateway").items
        return owner_uid(found[0]) if found else None

    wait_for(lambda: gateway_owner() == uid, 30, "the gateway Service")
    svc = core.read_namespaced_service("lefty-gateway", namespace)
    assert [p.name for p in svc.spec.ports] == ["http", "grpc"] and "app" not in (svc.metadata.labels or {})
    assert "Service lefty-gateway" in event_message(api, namespace, "lefty", "DeletingLeftover")


def test_a_modeldeployment_child_the_api_server_refuses_shows_ready_false_and_an_event(
    operator: Operator, api: client.ApiClient, namespace: str, served_model: str
) -> None:
    # Valid as a ModelDeployment name, but "<name>-gateway" is longer than a Service name may be (63).
    name = "m" * 60
    create_md(api, namespace, name, served_model)
    wait_for(lambda: md_ready(api, namespace, name).get("reason") == "ApplyFailed", what="ApplyFailed")
    ready = md_ready(api, namespace, name)
    assert ready["status"] == "False"
    assert f"applying Service {name}-gateway failed (422" in ready["message"]
    assert "must be no more than 63 characters" in ready["message"]
    assert event_message(api, namespace, name, "ApplyFailed") == ready["message"]


def md_children(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    """'Kind/name' -> controller uid of each Deployment, Service and ConfigMap labelled as the ModelDeployment's."""
    selector = f"kubeforge.dev/modeldeployment={name}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    found = {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
        "ConfigMap": core.list_namespaced_config_map(namespace, label_selector=selector).items,
    }
    return {f"{kind}/{obj.metadata.name}": owner_uid(obj) for kind, objs in found.items() for obj in objs}


def test_children_deleted_or_edited_by_hand_come_back(
    operator: Operator, api: client.ApiClient, namespace: str, served_model: str
) -> None:
    autoscaling = {"minReplicas": 1, "maxReplicas": 3}
    uid = create_md(api, namespace, "handy", served_model, autoscaling=autoscaling)["metadata"]["uid"]
    wait_for(lambda: len(md_children(api, namespace, "handy")) >= 5, 30, "children")
    before = md_children(api, namespace, "handy")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    # Scaled up as the autoscaler does (the scale subresource, its field manager): sending the other children again
    # must leave that alone.
    scale = {"spec": {"replicas": 3}}
    apps.patch_namespaced_deployment_scale("handy-v1", namespace, scale, field_manager="kube-controller-manager")
    apps.delete_namespaced_deployment("handy-gateway", namespace, _preload_content=False)
    # A watch reports the Deployment's deletion at once; the others are found missing within CHECK_S (30 s).
    wait_for(lambda: "Deployment/handy-gateway" in md_children(api, namespace, "handy"), 10, "the Deployment again")
    (routes,) = (name.partition("/")[2] for name in before if name.startswith("ConfigMap/"))
    core.delete_namespaced_service("handy-v1", namespace, _preload_content=False)
    core.delete_namespaced_config_map(routes, namespace, _preload_content=False)
    wait_for(lambda: set(md_children(api, namespace, "handy")) == set(before), 45, "the Service and ConfigMap again")
    assert set(md_children(api, namespace, "handy").values()) == {uid}
    # An edit by hand (kubectl edit) is undone within the same time: the operator's spec wins.
    data = core.read_namespaced_config_map(routes, namespace).data
    core.patch_namespaced_config_map(routes, namespace, {"data": {key: "# edited by hand\n" for key in data}})
    assert core.read_namespaced_config_map(routes, namespace).data != data
    wait_for(lambda: core.read_namespaced_config_map(routes, namespace).data == data, 45, "the route table restored")
    # A Deployment edited or scaled by hand is put back at once: its watch reports a spec the operator did not write.
    gateway = apps.read_namespaced_deployment("handy-gateway", namespace).spec
    (container,) = gateway.template.spec.containers
    edit = {"spec": {"template": {"spec": {"containers": [{"name": container.name, "image": "edited:by-hand"}]}}}}
    apps.patch_namespaced_deployment("handy-gateway", namespace, edit)
    apps.patch_namespaced_deployment_scale("handy-gateway", namespace, {"spec": {"replicas": 4}})

    def gateway_now() -> tuple[str, int]:
        spec = apps.read_namespaced_deployment("handy-gateway", namespace).spec
        return spec.template.spec.containers[0].image, spec.replicas

    wait_for(lambda: gateway_now() == (container.image, gateway.replicas), 10, "the gateway Deployment restored")
    assert apps.read_namespaced_deployment("handy-v1", namespace).spec.replicas == 3, "the autoscaler's replicas kept"


def test_a_restarted_operator_applies_only_the_children_changed_while_it_was_down(
    operator: Operator, api: client.ApiClient, namespace: str, served_model: str
) -> None:
    """An operator that starts again (an upgrade, a rescheduled pod) finds every child as it left it and sends none
    of them again, but for one someone changed while it was down: that one gets the spec back."""
    create_md(api, namespace, "steady", served_model)
    wait_for(lambda: len(md_children(api, namespace, "steady")) >= 5, 30, "children")
    core = client.CoreV1Api(api)
    (routes,) = (n.partition("/")[2] for n in md_children(api, namespace, "steady") if n.startswith("ConfigMap/"))
    data = core.read_namespaced_config_map(routes, namespace).data
    operator.stop()
    core.patch_namespaced_config_map(routes, namespace, {"data": {key: "# edited by hand\n" for key in data}})
    # Another's annotation on a child changes nothing the operator applies.
    core.patch_namespaced_service("steady-gateway", namespace, {"metadata": {"annotations": {"example.com/team": "a"}}})
    operator.start()
    wait_for(lambda: core.read_namespaced_config_map(routes, namespace).data == data, 30, "the route table restored")

    def applies() -> dict[str, float | None]:
        kinds = ("ConfigMap", "Deployment", "Service")
        found = {
            k: value(operator, "kubeforge_modeldeployment_child_applies_total", namespace=namespace, kind=k)
            for k in kinds
        }
        return {kind: n for kind, n in found.items() if n}

    wait_for(lambda: applies().get("ConfigMap") == 1.0, 10, "the route table's apply")
    time.sleep(3)  # passes the children's events and the clock start send nothing more
    assert applies() == {"ConfigMap": 1.0}
    assert core.read_namespaced_service("steady-gateway", namespace).metadata.annotations["example.com/team"] == "a"


def test_a_modeldeployment_deleted_and_created_again_at_once_keeps_the_new_ones_children(
    operator: Operator, api: client.ApiClient, namespace: str, served_model: str
) -> None:
    # Every child, named: the first one's pass applies them one by one, so a count could be read between two.
    children = {"ConfigMap/again-routes", "Deployment/again-gateway", "Deployment/again-v1"}
    children |= {"Service/again-gateway", "Service/again-v1"}
    old = create_md(api, namespace, "again", served_model)["metadata"]["uid"]
    wait_for(
        lambda: md_children(api, namespace, "again") == dict.fromkeys(children, old), 30, "the first one's children"
    )
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, MD_PLURAL, "again")
    uid = create_md(api, namespace, "again", served_model)["metadata"]["uid"]
    # The old object's children go (no garbage collector here: the operator removes them), the new one's stay.
    wait_for(lambda: md_children(api, namespace, "again") == dict.fromkeys(children, uid), 30, "the new one's children")
    time.sleep(3)  # what the old object's deletion still had to do is done by now
    assert md_children(api, namespace, "again") == dict.fromkeys(children, uid)


BEFORE = compute(np.random.default_rng(0).standard_normal((5_000, N_FEATURES)), FEATURES)
AFTER = compute(np.random.default_rng(1).standard_normal((5_000, N_FEATURES)) * 3 + 10, FEATURES)
"""Drift baselines of two registrations of version 1: their lowest edges tell them apart."""


def edge_routed(api: client.ApiClient, namespace: str, name: str) -> float | None:
    """The lowest edge of f0's histogram in the drift entry the gateway would be given for the first version."""
    core = client.CoreV1Api(api)
    found = core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={routes_name(name)}")
    table = yaml.safe_load(found.items[0].data[ROUTES_FILE]) if found.items else {}
    versions = ((table.get("models") or {}).get(name) or {}).get("versions") or [{}]
    drift = versions[0].get("drift")
    return json.loads(drift["baseline"])[0]["edges"][0] if drift else None


def test_a_registered_model_deleted_and_registered_again_routes_with_its_new_versions_baseline(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow
) -> None:
    """MLflow numbers the versions of a model registered again from 1: the operator must not take what it read of
    the old version 1 (its drift baseline, read once per version) for the new one."""
    model = f"reborn-{namespace}"  # registered models are global; namespaces are unique
    slices = kube.resource(api, endpoints.api_version(api), "EndpointSlice")
    for baseline in (BEFORE, AFTER):
        register(mlflow.url, model, Threshold(0.0, 1.0), signature(), baseline=baseline)
        create_md(api, namespace, "reborn", model)
        serve(api, namespace, "reborn", "1")
        edge = baseline.features[0].edges[0]
        wait_for(lambda edge=edge: edge_routed(api, namespace, "reborn") == edge, 30, "version 1 and its baseline")
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, MD_PLURAL, "reborn")
        wait_for(lambda: not md_children(api, namespace, "reborn"), 30, "the deployment's children gone")
        slices.delete(name="reborn-v1", namespace=namespace)
        MlflowClient(mlflow.url).delete_registered_model(model)
        time.sleep(RESOLVE_TTL)  # the registry's answers to the first deployment's passes are not reused


def test_a_served_version_registered_again_restarts_its_triton_and_routes_with_its_baseline(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow
) -> None:
    """The same, under a ModelDeployment that keeps serving: its Triton's pods restart to export the version now
    registered under that number, and the route table takes its baseline, without anyone touching the deployment."""
    model = f"reissued-{namespace}"
    registry = MlflowClient(mlflow.url)

    def registered(baseline: Any) -> str:
        register(mlflow.url, model, Threshold(0.0, 1.0), signature(), baseline=baseline)
        for alias in ("champion", "candidate"):  # no canary to run: the candidate is the stable version
            registry.set_registered_model_alias(model, alias, "1")
        return registry.get_model_version(model, "1").run_id

    first = registered(BEFORE)
    canary = {"model": {"name": model, "alias": "candidate"}, "steps": [{"weight": 50}]}
    spec = {"model": {"name": model, "alias": "champion"}, "canary": canary}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "reissued"}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, MD_PLURAL, {**body, "spec": spec}
    )
    serve(api, namespace, "reissued", "1")
    apps = client.AppsV1Api(api)

    def runs() -> tuple[str | None, str | None]:
        """The run on the Triton Deployment, and on its pod template."""
        found = apps.read_namespaced_deployment("reissued-v1", namespace)
        on_template = (found.spec.template.metadata.annotations or {}).get(MODEL_RUN)
        return (found.metadata.annotations or {}).get(MODEL_RUN), on_template

    wait_for(lambda: edge_routed(api, namespace, "reissued") == BEFORE.features[0].edges[0], 30, "the first baseline")
    assert runs() == (first, None)

    registry.delete_registered_model(model)
    second = registered(AFTER)
    wait_for(lambda: runs() == (second, second), 60, "the Triton pods restarted for the new registration")
    wait_for(lambda: edge_routed(api, namespace, "reissued") == AFTER.features[0].edges[0], 30, "its baseline")
    message = event_message(api, namespace, "reissued", "Reexported")
    assert f"version 1 of {model} is another registration now (run {second}, was {first})" in message

"""The operators' diff base builds the same essence kopf's own does, without copying what kopf drops."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from kubeforge import api
from kubeforge.operators import run
from kubeforge.operators.runtime import ANNOTATION_PREFIX, DELETION_HANDLERS_ONLY, EssenceStorage

KEY = "last-handled-configuration"

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "fraud-v3",
        "namespace": "ml",
        "uid": "0b5c",
        "resourceVersion": "812",
        "generation": 2,
        "creationTimestamp": "2026-12-04T10:00:00Z",
        "labels": {"kubeforge.dev/modeldeployment": "fraud", "kubeforge.dev/model-version": "3"},
        "annotations": {
            "deployment.kubernetes.io/revision": "2",
            "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}',
            f"{ANNOTATION_PREFIX}/{KEY}": '{"spec":{"replicas":1}}',
            "team": "risk",
        },
        "ownerReferences": [{"apiVersion": "kubeforge.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud"}],
        "managedFields": [{"manager": "kubeforge/0b5c", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
        "finalizers": ["example.com/keep"],
    },
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "triton", "image": "triton:24"}]}}},
    "status": {"availableReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]},
}

BARE: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "routes"}, "data": {"a": "1"}}


@pytest.mark.parametrize("raw", [DEPLOYMENT, BARE], ids=["deployment", "bare"])
@pytest.mark.parametrize("extra", [set(), {"status.availableReplicas"}, {"metadata.generation"}], ids=str)
def test_the_essence_is_kopfs(raw: dict[str, Any], extra: set[str]) -> None:
    fields = {tuple(f.split(".")) for f in extra}  # as kopf's registry passes them (FieldPath)
    ours = EssenceStorage(prefix=ANNOTATION_PREFIX, key=KEY).build(
        body=kopf.Body(copy.deepcopy(raw)), extra_fields=fields
    )
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX, key=KEY).build(
        body=kopf.Body(copy.deepcopy(raw)), extra_fields=fields
    )
    assert ours == kopfs


def test_the_essence_is_a_copy() -> None:
    """A later change of the object must not change the essence kopf compares with."""
    raw = copy.deepcopy(DEPLOYMENT)
    essence = EssenceStorage(prefix=ANNOTATION_PREFIX, key=KEY).build(body=kopf.Body(raw))
    raw["spec"]["template"]["spec"]["containers"][0]["image"] = "triton:25"
    raw["metadata"]["labels"]["kubeforge.dev/model-version"] = "4"
    assert essence["spec"]["template"]["spec"]["containers"][0]["image"] == "triton:24"
    assert essence["metadata"]["labels"]["kubeforge.dev/model-version"] == "3"
    assert "status" not in essence and "managedFields" not in essence["metadata"]


def test_a_kind_with_deletion_handlers_only_gets_no_diff_base_written() -> None:
    """kopf writes a diff base on a new object and on each change of its spec; for a kind whose only change
    handlers are deletion handlers nothing compares it, so kopf is shown no change (no write, no pass for its
    event), whatever an earlier release left in the object's annotations."""
    storage = EssenceStorage(prefix=ANNOTATION_PREFIX, key=KEY)
    view = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FeatureView", "metadata": {"name": "patients"}}
    view["spec"] = {"entities": [{"name": "patient_id"}]}
    for left in ({}, {f"{ANNOTATION_PREFIX}/{KEY}": '{"spec":{"entities":[]}}'}):
        body = kopf.Body({**view, "metadata": {**view["metadata"], "annotations": left}})
        assert storage.fetch(body=body) == storage.build(body=body)
    deployment = kopf.Body(copy.deepcopy(DEPLOYMENT))
    assert storage.fetch(body=deployment) == {"spec": {"replicas": 1}}, "other kinds keep theirs"


@pytest.mark.parametrize("kind", sorted(DELETION_HANDLERS_ONLY))
def test_a_kind_without_a_diff_base_has_no_change_handler_but_deletion_handlers(kind: str) -> None:
    """A creation, update, resume or field handler on such a kind would never run: the diff base it needs is not
    kept."""
    run.load()
    resource = kopf.Resource(api.GROUP, api.VERSION, getattr(api, kind).crd.plural, kind=kind, namespaced=True)
    handlers = kopf.get_default_registry()._changing.get_resource_handlers(resource=resource)
    assert handlers, f"{kind} has a deletion handler, else it needs no entry"
    assert {h.reason for h in handlers} == {kopf.Reason.DELETE}

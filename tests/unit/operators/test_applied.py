"""What a restarted operator reads from a child to tell whether to apply it again (operators.deployment.applied)."""

from __future__ import annotations

import copy
from typing import Any

from kubeforge.core import kube
from kubeforge.operators.deployment.applied import left, stamped, untouched
from kubeforge.operators.labels import APPLIED

UID = "0f6c-owner"
MINE = kube.child_manager(UID)


def child() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "clf-gateway",
            "namespace": "shop",
            "labels": {"kubeforge.dev/modeldeployment": "clf"},
            "ownerReferences": [{"kind": "ModelDeployment", "name": "clf", "uid": UID, "controller": True}],
        },
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }


def found(*managers: dict[str, Any]) -> dict[str, Any]:
    """A child's metadata as the API server returns it, with these managedFields besides the owner's apply."""
    meta = copy.deepcopy(child()["metadata"])
    owner = {"manager": MINE, "operation": "Apply", "fieldsV1": {"f:spec": {"f:ports": {}}}}
    return {**meta, "resourceVersion": "41", "managedFields": [owner, *managers]}


def test_the_digest_follows_the_content_and_the_planned_object_is_left_as_it_was() -> None:
    planned = child()
    obj, digest = stamped(planned)
    assert obj["metadata"]["annotations"] == {APPLIED: digest}
    assert "annotations" not in planned["metadata"]
    reordered = {key: planned[key] for key in reversed(list(planned))}
    assert stamped(reordered)[1] == digest
    changed = child()
    changed["spec"]["ports"][0]["port"] = 8081
    assert stamped(changed)[1] != digest


def test_a_child_only_its_owner_and_status_writers_changed_is_untouched() -> None:
    status = {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {"f:x": {}}}}
    assert untouched(found())
    assert untouched(found(status))
    assert untouched(found({**status, "subresource": "status", "fieldsV1": {"f:status": {}}}))


def test_others_annotations_are_theirs_but_a_field_the_owner_sets_is_not() -> None:
    revision = {"f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}}
    assert untouched(found({"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": revision}))
    edit = {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:ports": {}}}}
    assert not untouched(found(edit))
    label = {"f:metadata": {"f:labels": {"f:kubeforge.dev/modeldeployment": {}}}}
    assert not untouched(found({"manager": "kubectl-label", "operation": "Update", "fieldsV1": label}))
    ours = {"f:metadata": {"f:annotations": {"f:kubeforge.dev/model-run": {}}}}
    assert not untouched(found({"manager": "kubectl-annotate", "operation": "Update", "fieldsV1": ours}))


def test_a_scale_by_anyone_but_the_owner_counts_as_a_change() -> None:
    scale = {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale"}
    assert not untouched(found({**scale, "fieldsV1": {"f:spec": {"f:replicas": {}}}}))


def test_a_child_without_a_controller_is_never_taken_as_applied() -> None:
    meta = found()
    meta["ownerReferences"] = [{**meta["ownerReferences"][0], "controller": False}]
    assert not untouched(meta)


def test_what_a_childs_metadata_says_of_it() -> None:
    meta = found()
    meta["annotations"] = {APPLIED: "abc"}
    meta["generation"] = 3
    assert left(meta) == ("abc", True, kube.Written("41", 3))
    assert left(found()).digest == ""

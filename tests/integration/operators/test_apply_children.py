"""How an owner's children are written, against a real API server: one request when nothing is in the way,
and never another controller's object taken over.

The children here are ConfigMaps owned by a ConfigMap, so that no controller of the control plane acts on
them; the rules are the same for every kind the operators create. Each test runs through both connections
kube's functions take: the operators' KubeApi and the Kubernetes client's ApiClient (the CLI, the local runtime).
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kubeforge.core import kube

pytestmark = pytest.mark.integration


@pytest.fixture(params=["KubeApi", "ApiClient"])
def api(request: pytest.FixtureRequest, controlplane, api: client.ApiClient) -> kube.Api:
    """Each test once through each connection."""
    return kube.connect(controlplane.kubeconfig) if request.param == "KubeApi" else api


def owner(api: kube.Api, namespace: str, name: str = "owner") -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
    return kube.apply(api, body)


def child(owner_obj: dict[str, Any], data: dict[str, str], name: str = "child") -> dict[str, Any]:
    meta = {"name": name, "namespace": owner_obj["metadata"]["namespace"]}
    meta["ownerReferences"] = [kube.owner_reference(owner_obj)]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def read(api: kube.Api, namespace: str, name: str = "child") -> dict[str, Any] | None:
    return kube.get(api, "v1", "ConfigMap", name, namespace)


def managers(obj: dict[str, Any]) -> set[str]:
    return {m["manager"] for m in obj["metadata"].get("managedFields") or []}


def controller_uid(obj: dict[str, Any]) -> str:
    ref = kube.controller_of(obj)
    assert ref is not None
    return str(ref["uid"])


def test_a_new_child_is_created_by_its_owners_own_field_manager_and_updated_in_place(
    api: kube.Api, namespace: str
) -> None:
    parent = owner(api, namespace)
    kube.apply_children(api, [child(parent, {"a": "1", "b": "2"})])
    first = read(api, namespace)
    assert first is not None and first["data"] == {"a": "1", "b": "2"}
    assert managers(first) == {kube.child_manager(parent["metadata"]["uid"])}

    kube.apply_children(api, [child(parent, {"a": "3"})])
    second = read(api, namespace)
    assert second is not None and second["data"] == {"a": "3"}, "a key the owner stops setting is removed"
    assert second["metadata"]["uid"] == first["metadata"]["uid"]


def test_another_controllers_object_of_the_same_name_is_left_alone_even_when_its_content_agrees(
    api: kube.Api, namespace: str
) -> None:
    other, parent = owner(api, namespace, "other"), owner(api, namespace)
    kube.apply_children(api, [child(other, {"a": "1"})])

    with pytest.raises(kube.ChildNotApplied) as refused:
        kube.apply_children(api, [child(parent, {"a": "1"})])
    assert refused.value.reason == kube.APPLY_FAILED
    assert "ConfigMap child exists and belongs to ConfigMap other" in refused.value.message
    kept = read(api, namespace)
    assert kept is not None and controller_uid(kept) == other["metadata"]["uid"]
    assert len(kept["metadata"]["ownerReferences"]) == 1


def test_a_child_someone_else_edited_gets_the_owners_content_back(api: kube.Api, namespace: str) -> None:
    parent = owner(api, namespace)
    kube.apply_children(api, [child(parent, {"a": "1"})])
    edited = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "namespace": namespace}}
    kube.apply(api, {**edited, "data": {"a": "edited", "note": "mine"}}, field_manager="kubectl-edit")

    kube.apply_children(api, [child(parent, {"a": "1"})])
    after = read(api, namespace)
    assert after is not None and after["data"] == {"a": "1", "note": "mine"}, "the owner's field wins, others stay"


def test_a_deleted_predecessors_leftover_is_deleted_and_created_anew(api: kube.Api, namespace: str) -> None:
    first = owner(api, namespace)
    kube.apply_children(api, [child(first, {"a": "1"})])
    kube.delete(api, "v1", "ConfigMap", "owner", namespace)
    second = owner(api, namespace)  # same name, new uid; no garbage collector removed the child

    with pytest.raises(kube.ChildNotApplied) as leftover:
        kube.apply_children(api, [child(second, {"a": "1"})])
    assert leftover.value.reason == kube.DELETING_LEFTOVER
    assert first["metadata"]["uid"] in leftover.value.message
    kube.apply_children(api, [child(second, {"a": "1"})])
    fresh = read(api, namespace)
    assert fresh is not None and controller_uid(fresh) == second["metadata"]["uid"]


def test_a_child_written_by_the_shared_field_manager_of_earlier_versions_drops_what_the_owner_no_longer_sets(
    api: kube.Api, namespace: str
) -> None:
    parent = owner(api, namespace)
    kube.apply(api, child(parent, {"a": "1", "old": "x"}))  # as operators before per-owner managers did

    kube.apply_children(api, [child(parent, {"a": "1"})])
    after = read(api, namespace)
    assert after is not None and after["data"] == {"a": "1"}
    assert managers(after) == {kube.child_manager(parent["metadata"]["uid"])}

"""Kubernetes client helpers: one way to load credentials and one way to write objects.

Every write kubeforge makes is a server-side apply, so repeated applies are idempotent and
fields kubeforge does not set (user labels, annotations) are left alone. Status is written through
the status subresource, and only when it changed, so a resync does not bump resourceVersions
or wake watchers for nothing. An operator's children are applied with :func:`apply_children`,
by a field manager per owner, which never takes over an object another owner controls and
turns every refusal into :class:`ChildNotApplied`, which the operators report as ``Ready=False``.

The functions take either connection: the operators' :class:`KubeApi`, or the Kubernetes
client's ``ApiClient`` where a caller uses the client's typed APIs as well. Either way an
error status raises :class:`ApiError`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .conditions import FALSE, StatusDraft, get_condition, now_rfc3339
from .kubeapi import ApiError, KubeApi

if TYPE_CHECKING:
    from kubernetes import client

    # The operators hold a KubeApi (no Kubernetes client package in their process); the CLI and the local
    # runtime, which use the client's typed APIs as well, pass their ApiClient.
    Api = KubeApi | client.ApiClient

__all__ = ["ApiError", "KubeApi"]  # re-exported: what callers catch, and what connect() returns

FIELD_MANAGER = "kubeforge"


def _kubeconfig(kubeconfig: str | Path | None) -> str | None:
    """The kubeconfig to read: the one given, $KUBECONFIG, or ~/.kube/config when it exists; None means in-cluster."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return str(path)
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.is_file() else None


def api_client(kubeconfig: str | Path | None = None) -> client.ApiClient:
    """An ApiClient from an explicit kubeconfig, $KUBECONFIG, ~/.kube/config, or in-cluster credentials."""
    from kubernetes import client, config

    path = _kubeconfig(kubeconfig)
    if path:
        return config.new_client_from_config(config_file=path)
    config.load_incluster_config()
    return client.ApiClient()


def connect(kubeconfig: str | Path | None = None) -> KubeApi:
    """A KubeApi from the same credentials api_client would use."""
    path = _kubeconfig(kubeconfig)
    return KubeApi.from_kubeconfig(path) if path else KubeApi.in_cluster()


@functools.lru_cache(maxsize=8)
def _dynamic(api: Api) -> Any:
    from kubernetes import dynamic

    return dynamic.DynamicClient(api)


def resource(api: Api, api_version: str, kind: str) -> Any:
    """The discovered API resource for apiVersion/kind (cached per client), for the dynamic client's calls.

    api_version may be a bare group ("discovery.k8s.io"): the server's preferred version is used.
    """
    if "/" not in api_version and "." in api_version:
        return _dynamic(api).resources.get(group=api_version, kind=kind, preferred=True)
    return _dynamic(api).resources.get(api_version=api_version, kind=kind)


def _request(
    api: Api,
    method: str,
    path: str,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> dict[str, Any]:
    """One API request answered as plain JSON; an error status raises ApiError (status, reason, body).

    Through an ApiClient this skips the dynamic client, which would wrap the answer in its ResourceInstance
    and format a traceback into every exception it re-raises.
    """
    if isinstance(api, KubeApi):
        return api.request(method, path, body, query, content_type, accept)
    headers = {"Accept": accept, "Content-Type": content_type}
    request = api.param_serialize(
        method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api.call_api(*request)
    data: bytes = response.read()  # the body, also kept as response.data
    if not 200 <= response.status <= 299:
        raise ApiError(response.status, response.reason or "", data.decode(errors="replace"))
    return json.loads(data)


def _path(api: Api, api_version: str, kind: str, name: str | None, namespace: str | None) -> str:
    """The path of an object, or with name None of its collection."""
    if isinstance(api, KubeApi):
        return api.path(api_version, kind, name, namespace)
    res = resource(api, api_version, kind)
    return str(res.path(name=name, namespace=(namespace or "default") if res.namespaced else None))


def apply(api: Api, obj: dict[str, Any], field_manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
    """Server-side apply one object (create or update); the object as written.

    With force, the fields it sets are taken over from any other manager; without, a field another manager set
    to a different value makes the API server refuse the whole apply (409 Conflict) and nothing is written.
    """
    meta = obj["metadata"]
    path = _path(api, obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
    return _request(api, "PATCH", path, obj, query, content_type="application/apply-patch+yaml")


def child_manager(owner_uid: str) -> str:
    """The field manager of an owner's children: one per owner, so that a same-named child of an earlier owner
    is refused rather than taken over (see apply_children)."""
    return f"{FIELD_MANAGER}/{owner_uid}"


# Reasons of the Ready=False condition an owner reports while a child cannot be applied.
APPLY_FAILED = "ApplyFailed"
DELETING_LEFTOVER = "DeletingLeftover"


class ChildNotApplied(Exception):
    """A child of a resource could not be written; the resource reports it as Ready=False and tries again.

    reason is APPLY_FAILED (the API server refused the object: the message names it and quotes the server)
    or DELETING_LEFTOVER (a deleted predecessor's child of the same name was in the way and is being removed).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message

    def retry_after(self, retries: int) -> float:
        """Seconds until the next try: a leftover is gone within moments; a refusal usually needs someone to
        change something, so the pause doubles from 5 s to 5 min and the API server is not hammered."""
        if self.reason == DELETING_LEFTOVER:
            return 2.0
        return float(min(5 * 2**retries, 300))

    def report(self, status: StatusDraft, old: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Set Ready=False with this reason and message on status; the Warning event to record, only when Ready
        said something else in old (events mark transitions, so each retry does not repeat it)."""
        status.cond("Ready", FALSE, self.reason, self.message)
        before = get_condition(old.get("conditions"), "Ready") or {}
        if (before.get("status"), before.get("reason"), before.get("message")) == (FALSE, self.reason, self.message):
            return []
        return [("Warning", self.reason, self.message)]


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference of obj with controller: true, if any."""
    return next((ref for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)


def _owner_key(ref: dict[str, Any]) -> tuple[str, str, str]:
    """API group, kind and name of an owner: what stays the same when an owner is deleted and created anew."""
    return ref.get("apiVersion", "").rpartition("/")[0], ref.get("kind", ""), ref.get("name", "")


def _server_message(err: ApiError) -> str:
    """The API server's own explanation; its invalid-value dumps (a whole pod template for an immutable field)
    are shortened in the middle, keeping what and why."""
    try:
        text = json.loads(err.body or "{}").get("message") or ""
    except (ValueError, AttributeError):
        text = ""
    text = text or str(err.body or err.reason)
    return text if len(text) <= 800 else f"{text[:400]} … {text[-300:]}"


class Written(NamedTuple):
    """Where an apply left a child: any later write changes its resourceVersion, a later change of its spec (of an
    object that has one: a Deployment, not a Service or ConfigMap) its generation."""

    version: str
    generation: int


def _written(obj: dict[str, Any]) -> Written:
    meta = obj.get("metadata") or {}
    return Written(meta.get("resourceVersion", ""), meta.get("generation") or 0)


def apply_children(api: Api, objs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Written]:
    """Server-side apply an owner's children (each with a controller ownerReference to it), in order; where each
    was left, by (kind, name), which tells a later change by someone else.

    Another controller's object of the same name is never taken over. Each child is applied by its owner's own
    field manager (:func:`child_manager`) without force, which the API server refuses for any object another
    controller holds: a field set differently by another manager is a conflict, and where every field agrees
    the object would have two controller references, which is invalid. So the common cases (a new child, or
    one this owner applied before) take a single request. Only a refusal reads the object: when its controller
    is an earlier owner of the same kind and name that no longer exists (deleted while the garbage collector
    had not removed its children yet, or, without a garbage collector, never will), the leftover is deleted,
    the other children are applied, and ChildNotApplied(DELETING_LEFTOVER) asks for a retry that creates it
    anew. An object of another controller, or any refusal of the API server, raises
    ChildNotApplied(APPLY_FAILED) naming the object. A child that is this owner's but that someone else
    changed (``kubectl edit``) is applied again with force: the owner's spec wins.
    """
    leftovers: list[str] = []
    predecessor: dict[str, Any] = {}
    versions: dict[tuple[str, str], Written] = {}
    for obj in objs:
        meta = obj["metadata"]
        what = f"{obj['kind']} {meta['name']}"
        mine = controller_of(obj)
        if mine is not None:
            try:
                written = apply(api, obj, child_manager(mine["uid"]), force=False)
                versions[(obj["kind"], meta["name"])] = _written(written)
                _release_shared_manager(api, obj, written)
                continue
            except ApiError as err:
                if err.status not in (409, 422):
                    raise ChildNotApplied(
                        APPLY_FAILED, f"applying {what} failed ({err.status} {err.reason}): {_server_message(err)}"
                    ) from err
        existing = get(api, obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"])
        theirs = controller_of(existing) if existing else None
        if theirs is not None and mine is not None and theirs.get("uid") != mine["uid"]:
            if _owner_key(theirs) != _owner_key(mine):
                raise ChildNotApplied(
                    APPLY_FAILED,
                    f"{what} exists and belongs to {theirs.get('kind')} {theirs.get('name')}: delete or rename it",
                )
            owner = get(api, mine["apiVersion"], mine["kind"], mine["name"], meta["namespace"])
            if owner is not None and owner["metadata"]["uid"] == theirs.get("uid"):
                # Not a leftover: this pass works from an owner that has been replaced since it was read.
                raise ChildNotApplied(APPLY_FAILED, f"{what} belongs to the {mine['kind']} that replaced this one")
            delete(api, obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"])
            leftovers.append(what)
            predecessor = theirs
            continue
        try:
            written = apply(api, obj, child_manager(mine["uid"]) if mine else FIELD_MANAGER)
        except ApiError as err:
            raise ChildNotApplied(
                APPLY_FAILED, f"applying {what} failed ({err.status} {err.reason}): {_server_message(err)}"
            ) from err
        versions[(obj["kind"], meta["name"])] = _written(written)
        _release_shared_manager(api, obj, written)
    if leftovers:
        raise ChildNotApplied(
            DELETING_LEFTOVER,
            f"{' and '.join(leftovers)} belonged to an earlier {predecessor['kind']} {predecessor['name']} "
            f"(uid {predecessor['uid']}) that was deleted: deleting, to create anew for this one",
        )
    return versions


def _release_shared_manager(api: Api, obj: dict[str, Any], written: dict[str, Any]) -> None:
    """Children applied before each owner had its own field manager were applied by FIELD_MANAGER itself; once
    the owner's manager holds the child, an empty apply by FIELD_MANAGER gives up that manager's fields, so a
    field the owner stops setting is removed instead of lingering under the old name. Once per such child."""
    if controller_of(obj) is None:
        return
    managers = written.get("metadata", {}).get("managedFields") or []
    if any(m.get("manager") == FIELD_MANAGER and m.get("operation") == "Apply" for m in managers):
        meta = obj["metadata"]
        empty = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {"name": meta["name"]}}
        empty["metadata"]["namespace"] = meta["namespace"]
        apply(api, empty, FIELD_MANAGER, force=False)


def list_objects(api: Api, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The objects of a kind in namespace that match label_selector, as wire-format dicts."""
    query = [("labelSelector", label_selector)] if label_selector else None
    return _request(api, "GET", _path(api, api_version, kind, None, namespace), query=query).get("items") or []


METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
"""The Accept header that asks for a list of objects' metadata only."""


def list_metadata(api: Api, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The metadata of the objects of a kind in namespace that match label_selector, and nothing else of them (the
    API server leaves out spec, data and status)."""
    query = [("labelSelector", label_selector)]
    found = _request(api, "GET", _path(api, api_version, kind, None, namespace), query=query, accept=METADATA_LIST)
    return [item["metadata"] for item in found.get("items") or []]


def list_versions(api: Api, api_version: str, kind: str, namespace: str, label_selector: str) -> dict[str, str]:
    """Name -> resourceVersion of the objects of a kind in namespace that match label_selector (list_metadata)."""
    return {
        meta["name"]: meta.get("resourceVersion", "")
        for meta in list_metadata(api, api_version, kind, namespace, label_selector)
    }


def create(api: Api, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Create obj as it is (no apply: an object of that name made by anyone else is left alone); None when one
    exists already, so a deterministic name makes creating it again from a retry or a second replica harmless."""
    meta = obj["metadata"]
    try:
        return _request(api, "POST", _path(api, obj["apiVersion"], obj["kind"], None, meta.get("namespace")), obj)
    except ApiError as err:
        if err.status == 409:
            return None
        raise


def get(api: Api, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return _request(api, "GET", _path(api, api_version, kind, name, namespace))
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def delete(api: Api, api_version: str, kind: str, name: str, namespace: str) -> bool:
    """Delete with background propagation; False when it was already gone."""
    try:
        _request(api, "DELETE", _path(api, api_version, kind, name, namespace), {"propagationPolicy": "Background"})
        return True
    except ApiError as err:
        if err.status == 404:
            return False
        raise


def patch_status(
    api: Api,
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    uid: str | None = None,
) -> dict[str, Any] | None:
    """Patch the status subresource when new differs from old; the object as written, None when nothing was.

    With uid, only the object with that uid is written: a status computed for an object that has been
    deleted and created anew under its name in the meantime must not land on the new one (None then).
    The status subresource ignores metadata in a merge patch, so that write is a JSON patch whose first
    operation tests metadata.uid, and replaces the status as a whole.
    """
    if old == new:
        return None
    path = _path(api, api_version, kind, name, namespace) + "/status"
    if uid is None:
        # A JSON merge patch sets keys present in new and removes keys dropped since old.
        patch = dict(new)
        for gone in set(old or {}) - set(new):
            patch[gone] = None
        return _request(api, "PATCH", path, {"status": patch}, content_type="application/merge-patch+json")
    whole = {k: v for k, v in new.items() if v is not None}
    ops = [{"op": "test", "path": "/metadata/uid", "value": uid}, {"op": "add", "path": "/status", "value": whole}]
    try:
        return _request(api, "PATCH", path, ops, content_type="application/json-patch+json")
    except ApiError as err:
        current = get(api, api_version, kind, name, namespace) if err.status == 422 else None
        if err.status == 404 or (err.status == 422 and (current or {}).get("metadata", {}).get("uid") != uid):
            return None
        raise


def write_status(
    api: Api,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    new: dict[str, Any],
    events: list[tuple[str, str, str]],
    component: str,
) -> dict[str, Any] | None:
    """Patch body's status when it changed, and only then record events (type, reason, message):
    events mark transitions, so a resync that changes nothing stays silent. Nothing is written when body
    has been replaced by a new object of the same name since it was read. The object as written, or None."""
    meta = body["metadata"]
    written = patch_status(
        api, body["apiVersion"], body["kind"], meta["name"], meta["namespace"], old, new, meta["uid"]
    )
    if written is None:
        return None
    for type_, reason, message in events:
        event(api, body, type_, reason, message, component=component)
    return written


@dataclass(frozen=True)
class Capabilities:
    """What the API server's version supports, for fields that newer clusters added."""

    major: int
    minor: int

    @property
    def indexed_jobs(self) -> bool:
        """Job.spec.completionMode: Indexed (1.21+), needed for multi-replica training."""
        return (self.major, self.minor) >= (1, 21)

    @property
    def job_suspend(self) -> bool:
        """Job.spec.suspend (1.21+)."""
        return (self.major, self.minor) >= (1, 21)


def capabilities(api: Api) -> Capabilities:
    info = _request(api, "GET", "/version")
    return Capabilities(int(info["major"]), int("".join(ch for ch in info["minor"] if ch.isdigit())))


def serves(api: Api, api_version: str, kind: str) -> bool:
    """Whether the API server serves kind now: asked each time, as a discovery cache goes on answering with a
    group the server dropped (a CRD deleted)."""
    try:
        found = _request(api, "GET", f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}")
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return any(r.get("kind") == kind for r in found.get("resources") or [])


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to owner (garbage collection deletes children with it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def event(api: Api, obj: dict[str, Any], type_: str, reason: str, message: str, component: str = "kubeforge") -> None:
    """Record a core/v1 Event about obj (what `kubectl describe` shows)."""
    meta = obj["metadata"]
    now = now_rfc3339()
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
    }
    _request(api, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)

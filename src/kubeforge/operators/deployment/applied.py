"""Children as an earlier operator process applied them, so that a restarted operator applies only what differs.

A pass skips the children that have not changed since this process applied them (handlers.State.sent). That is
memory, and an operator that starts again (an upgrade, a rescheduled pod) starts without it: every
ModelDeployment's first pass would apply all its children again, five requests each, for nothing (at 500
ModelDeployments, 2,500 applies and a quarter of a minute of both processes' CPU; docs/benchmarks.md, Operator,
round twelve). So each child carries the digest of what its owner applied (labels.APPLIED), and a first pass takes
a child as applied, without a request, when the child it finds carries the digest of what it would send and no one
else has changed it since (its managedFields).

Deployments are found in the operator's index, which the watch keeps current. The other kinds are found in one
metadata-only list per kind and namespace, made for the ModelDeployments that were there before this process
started (one created since has no children from before) and kept for LISTING_S; one of them deleted or changed
after the list is caught as any other such change is, by the check of unwatched children within 30 seconds."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from ...core import kube
from ..labels import APPLIED, MODELDEPLOYMENT

Kinds = tuple[tuple[str, str], ...]
LISTING_S = 60.0
"""How long a namespace's listing serves first passes: the clock forgets it after that (:meth:`Listings.expire`),
and a first pass that comes later lists the namespace again."""


class Left(NamedTuple):
    """A child as found: the digest of what its owner last applied ("" when it carries none), whether anyone else
    changed it since, and where it is now."""

    digest: str
    untouched: bool
    written: kube.Written


def stamped(obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """obj with the digest of its content in APPLIED, and that digest."""
    digest = hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}), APPLIED: digest}}}, digest


def left(meta: Mapping[str, Any]) -> Left:
    """What a child's metadata says of it."""
    annotations = meta.get("annotations") or {}
    written = kube.Written(meta.get("resourceVersion", ""), meta.get("generation") or 0)
    return Left(annotations.get(APPLIED, ""), untouched(meta), written)


def untouched(meta: Mapping[str, Any]) -> bool:
    """Whether the fields of the child that only its owner sets are still the owner's alone: no field manager but
    the owner's (kube.child_manager) holds one, status aside, nor any of its labels or kubeforge's annotations.
    Others' annotations (the Deployment controller's revision, kubectl's) change nothing the owner applies; a scale
    (``kubectl scale``, an autoscaler) does, as a running operator's pass takes it (handlers._edited)."""
    owner = next((ref for ref in meta.get("ownerReferences") or () if ref.get("controller")), None)
    if owner is None:
        return False
    mine = kube.child_manager(owner.get("uid", ""))
    for entry in meta.get("managedFields") or ():
        if entry.get("manager") == mine or entry.get("subresource") == "status":
            continue
        fields = dict(entry.get("fieldsV1") or {})
        fields.pop("f:status", None)
        metadata = dict(fields.pop("f:metadata", None) or {})
        annotations = metadata.pop("f:annotations", None) or {}
        if fields or metadata or any(key.startswith("f:kubeforge.dev/") for key in annotations):
            return False
    return True


class Listings:
    """The children of a namespace's ModelDeployments of kinds no index holds, listed once for the first passes after
    this process started."""

    def __init__(self, started: float | None = None):
        self.started = time.time() if started is None else started
        self._listed: dict[tuple[str, Kinds], tuple[float, dict[tuple[str, str], Left]]] = {}
        self._lock = threading.Lock()

    def of(self, api: kube.Api, namespace: str, kinds: Kinds, created: float) -> Mapping[tuple[str, str], Left] | None:
        """(kind, name) -> what is found of each child of kinds ((apiVersion, kind) each) in namespace, for a
        ModelDeployment created at created (epoch seconds); None for one created since this process started."""
        if created >= self.started:
            return None
        with self._lock:
            if (namespace, kinds) not in self._listed:
                listed_at, found = time.monotonic(), {}
                for api_version, kind in kinds:
                    for meta in kube.list_metadata(api, api_version, kind, namespace, MODELDEPLOYMENT):
                        found[(kind, meta["name"])] = left(meta)
                self._listed[(namespace, kinds)] = (listed_at, found)
            return self._listed[(namespace, kinds)][1]

    def expire(self) -> None:
        """Forget the listings older than LISTING_S (the clock calls this every 30 seconds: after a start nothing
        asks again, and a listing kept longer would only grow staler)."""
        with self._lock:
            now = time.monotonic()
            self._listed = {key: item for key, item in self._listed.items() if now - item[0] <= LISTING_S}

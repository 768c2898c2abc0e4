"""What every kubeforge operator shares: kopf settings, credentials, and a context object.

kopf keeps its own bookkeeping in annotations (not in status: the CRDs' strict schemas
would prune unknown status fields). Credentials are read at login time from
$KUBECONFIG when set, else from the pod's service account, so tests and the local
runtime can point an operator at any API server.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, cast

import kopf

from ..core import kube
from ..core.mlflow_rest import MLflowRegistry
from .labels import PART_OF
from .settings import Settings

ANNOTATION_PREFIX = "kopf.kubeforge.dev"
PODS_SELECTOR = f"{PART_OF}=kubeforge"
"""The pods the operators watch: kubeforge's own (trainers, Triton, gateways, materialization), whichever kind
owns them. One selector for all: kopf joins every selector set for a resource with AND."""
EXECUTOR = "kubeforge.executor"
"""Key of kopf's thread pool in every object's memo (kopf copies the operator's memo into each): a handler that
decides on kopf's loop runs its pass there, as kopf runs its sync handlers. kopf gives its settings to activities
only, not to resource handlers."""


class WorkerLimit:
    """kopf's ``settings.queueing.worker_limit`` (how many objects of a kind are worked on at once), in force only
    once kopf has indexed every object the operator started with.

    A burst (hundreds of resources created at once) otherwise has every object's worker running at once, each
    holding its decoded events and the copies kopf makes while it handles them: a third of the operator's memory
    at 500 ModelDeployments (docs/benchmarks.md, Operator, round eleven). But a fixed limit stops an operator that
    starts with more objects of an indexed kind than the limit: kopf holds each such object's place in its
    "everything indexed" gate until its worker has indexed it, and a running worker waits at that gate before its
    handlers, so the running workers wait for objects that wait for a running place (nolar/kopf#1243). So the limit
    holds only once a handler has run, which kopf allows only after the gate opened for good (it never closes
    again; objects that come later hold no place in it). kopf compares ``running < limit``: an int's comparison
    with this object falls back to __gt__, which is where the limit is decided (tests/unit/operators pin that)."""

    def __init__(self) -> None:
        self.limit = Settings.worker_limit  # the operator's own at start-up (configure)
        self.indexed = False

    def __gt__(self, running: int) -> bool:
        return not self.indexed or running < self.limit

    def __repr__(self) -> str:
        return f"WorkerLimit({self.limit}, indexed={self.indexed})"


WORKERS = WorkerLimit()
"""The operator process's worker limit: every event handler of an owner kind sets indexed (see WorkerLimit)."""
WORKER_IDLE_S = 0.1
"""How long an object's worker waits for its next event before it ends and gives its place to another (kopf's
5 s would keep places held by workers with nothing to do while others queue)."""


@dataclass(frozen=True)
class Context:
    api: kube.KubeApi
    settings: Settings
    capabilities: kube.Capabilities
    registry: MLflowRegistry


@functools.cache
def context() -> Context:
    """Created on first use, in the operator process, from the environment."""
    api = kube.connect()
    settings = Settings.from_env()
    return Context(api, settings, kube.capabilities(api), MLflowRegistry(settings.mlflow_tracking_uri))


ESSENCE_METADATA = ("labels", "annotations", "ownerReferences")
"""What of an object's metadata kopf's essence keeps (labels, annotations) or its storage keys read (owners)."""


DELETION_HANDLERS_ONLY = frozenset({"FeatureView"})
"""Kinds whose only change handlers are deletion handlers (``kopf.on.delete``), for which kopf's diff base is
compared by nothing (a unit test holds the handlers to it)."""


class EssenceStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base in annotations, built without copying what it then drops, and none for kinds with no
    creation, update or resume handlers.

    kopf builds an object's essence (what its change detection compares) for every event of every watched kind,
    by deep-copying the whole body and then deleting its metadata but labels and annotations, and its status. For
    a Deployment that is mostly managedFields and status, copied only to be thrown away. This passes kopf a body
    without them, so the essence it builds is the same for a fraction of the copying; where handlers ask for
    extra fields (``field=`` on change handlers), which may be anywhere, kopf gets the whole body as before.

    For a kind in DELETION_HANDLERS_ONLY kopf would still write the diff base on a new object and on every change
    of its spec, only to compare it with nothing: a write, and a pass over the object for its event, each time.
    Its stored essence is taken to be the object as it is, so kopf sees no change to record; a deletion is told
    by the deletion timestamp, not by the diff base, and still reaches the deletion handlers.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") in DELETION_HANDLERS_ONLY:
            return self.build(body=body)
        return super().fetch(body=body)

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if not extra_fields:
            meta = body.get("metadata") or {}
            slim = {key: value for key, value in body.items() if key not in ("metadata", "status")}
            slim["metadata"] = {key: meta[key] for key in ESSENCE_METADATA if key in meta}
            body = kopf.Body(cast(kopf.RawBody, slim))  # the object's own fields, less status and most metadata
        return super().build(body=body, extra_fields=extra_fields)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = EssenceStorage(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.enabled = False  # kubeforge posts its own events, on transitions only
    settings.watching.server_timeout = 300
    settings.queueing.worker_limit = WORKERS  # type: ignore[assignment]  # an int once indexed (see WorkerLimit)
    settings.queueing.idle_timeout = WORKER_IDLE_S
    settings.watching.label_selectors[("v1", "pods")] = PODS_SELECTOR
    settings.networking.request_timeout = 30
    memo[EXECUTOR] = settings.execution.executor
    WORKERS.limit = context().settings.worker_limit


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

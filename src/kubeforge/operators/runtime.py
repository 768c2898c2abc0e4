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
from typing import Any

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


FINALIZER = f"{ANNOTATION_PREFIX}/finalizer"
"""The finalizer kopf adds to a kind with deletion handlers (the FeatureView), until they have run."""


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, for operators that compare none: every object's essence is the same empty one.

    On every event of every watched kind kopf reads the essence it stored on the object and builds the object's
    essence anew (a deep copy of its spec, labels and annotations), to tell a creation from an update for change
    handlers (``kopf.on.create``, ``on.update``, ``on.resume``, ``on.field``) and to restart idle timers. kubeforge's
    operators have none of them: each pass reads the object as it is (``kopf.on.event``), and a FeatureView's
    deletion handler is started by the deletion timestamp, which kopf checks before any difference. So kopf is
    shown no difference: it stores nothing on the object and copies nothing per event (145 µs of a Deployment's
    event, docs/benchmarks.md, Operator, round twenty). A unit test fails if a handler that needs the diff base is
    added; an essence an earlier release stored is left where it is, unread.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = FINALIZER
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

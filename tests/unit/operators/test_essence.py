"""The operators show kopf no difference between an object and its diff base: kopf copies nothing per event, stores
nothing on objects, and the one change handler there is (a FeatureView's deletion) still starts."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest
from kopf._cogs.structs import diffs
from kopf._cogs.structs.patches import Patch
from kopf._core.intents import causes

from kubeforge import api
from kubeforge.operators import run
from kubeforge.operators.runtime import ANNOTATION_PREFIX, FINALIZER, NoDiffBase

VIEWS = kopf.Resource(api.GROUP, api.VERSION, api.FeatureView.crd.plural, kind="FeatureView", namespaced=True)


def cause_of(raw: dict[str, Any], event: str = "MODIFIED") -> causes.ChangingCause:
    """The change kopf finds in raw (its own detection, from what the operators' diff base gives it)."""
    storage = NoDiffBase(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    body = kopf.Body(raw)
    old, new = storage.fetch(body=body), storage.build(body=body)
    assert old == new, "kopf stores a diff base only when it differs from the one it fetched"
    return causes.detect_changing_cause(
        finalizer=FINALIZER,
        raw_event={"type": event, "object": raw},
        body=body,
        old=old,
        new=new,
        diff=diffs.diff(old, new),
        resource=VIEWS,
        logger=logging.getLogger(__name__),
        patch=Patch(),
        memo=kopf.Memo(),
        indices={},
    )


def view(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "patients", "namespace": "ml", **meta},
        "spec": {"entities": [{"name": "patient_id"}]},
    }


@pytest.mark.parametrize("event", ["ADDED", "MODIFIED"])
def test_a_new_or_changed_object_is_no_change_to_kopf(event: str) -> None:
    """Neither a creation nor an update, whatever an earlier release stored in the object's annotations."""
    stored = {f"{ANNOTATION_PREFIX}/last-handled-configuration": '{"spec":{"entities":[]}}'}
    assert cause_of(view(), event).reason == causes.Reason.NOOP
    assert cause_of(view(annotations=stored), event).reason == causes.Reason.NOOP


def test_a_deletion_still_reaches_the_deletion_handlers() -> None:
    deleting = view(deletionTimestamp="2026-12-07T10:00:00Z", finalizers=[FINALIZER])
    assert cause_of(deleting).reason == causes.Reason.DELETE


def test_no_handler_needs_a_diff_base() -> None:
    """A creation, update, resume or field handler would never run, nor would an idle timer restart: kopf is shown no
    difference between an object and its diff base. Such a handler needs NoDiffBase gone first."""
    run.load()
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    assert changing, "the FeatureView's deletion handler is registered"
    for handler in changing:
        assert handler.reason == kopf.Reason.DELETE and handler.field is None, handler.id
    for handler in registry._spawning.get_all_handlers():
        assert getattr(handler, "idle", None) is None, handler.id

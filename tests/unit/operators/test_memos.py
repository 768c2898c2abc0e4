"""Per-object memory of the operators: the pass lock that a deleted object and its successor share."""

from __future__ import annotations

import gc
import threading
from typing import Any

import kopf

from kubeforge.operators import memos


def test_an_object_and_one_recreated_under_its_name_share_a_pass_lock_that_goes_with_them() -> None:
    """A pass reads its object by name, so the last passes of a deleted TrainingJob and the first of one
    re-created under the same name (each with a memo of its own) must not run at once."""
    old, new, other = kopf.Memo(), kopf.Memo(), kopf.Memo()
    lock = memos.lock_of(old, "ml", "churn")
    assert memos.lock_of(new, "ml", "churn") is lock
    assert memos.lock_of(old, "ml", "churn") is lock
    assert memos.lock_of(other, "ml", "fraud") is not lock
    with lock:
        assert not lock._lock.acquire(blocking=False)
    del old, new, lock
    gc.collect()
    assert ("ml", "churn") not in memos._by_name  # nothing is left behind once both objects are forgotten
    assert ("ml", "fraud") in memos._by_name


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def test_an_event_bringing_what_the_last_settled_pass_read_starts_no_pass() -> None:
    """A restarted operator gets a TrainingJob's first event and its Job's at once: the pass of the first reads both,
    so the second would read the same again. Only what a settled pass read counts, and only at that version."""
    state = {"TrainingJob": obj("churn", "10"), "Job": obj("churn-1", "11")}
    settle = True

    def reconcile(namespace: str, name: str, reads: memos.Reads) -> bool:
        for kind, found in state.items():
            reads(kind, found)
        reads("Pod", None)  # not found: nothing noted
        return settle

    memo = kopf.Memo()
    assert not memos.read_already(memo, "Job", obj("churn-1", "11"))  # no pass yet
    memos.run_pass(memo, reconcile, "ml", "churn")
    assert memos.read_already(memo, "TrainingJob", obj("churn", "10"))
    assert memos.read_already(memo, "Job", obj("churn-1", "11"))
    assert not memos.read_already(memo, "Job", obj("churn-1", "12"))  # changed since: a pass must see it
    assert not memos.read_already(memo, "Pod", obj("churn-1", "11"))  # another kind's object
    assert not memos.read_already(memo, "Job", {"metadata": {"name": "churn-1"}})  # no version to compare

    state["Job"], settle = obj("churn-1", "12"), False
    memos.run_pass(memo, reconcile, "ml", "churn")
    assert not memos.read_already(memo, "Job", obj("churn-1", "12"))  # a pass that did not settle is tried again
    assert not memos.read_already(memo, "TrainingJob", obj("churn", "10"))
    assert memos.unsettled(memo)


def test_an_event_that_comes_while_a_pass_runs_is_weighed_against_what_that_pass_read() -> None:
    """A pass's own status write comes back as an event while the pass is still finishing (when a Job's event or the
    clock started it, on another thread): it waits for the pass and starts none when the pass read or wrote that
    version; one bringing anything newer does."""
    inside, finish = threading.Event(), threading.Event()
    passes: list[str] = []

    def reconcile(namespace: str, name: str, reads: memos.Reads, who: str) -> bool:
        passes.append(who)
        if who == "job event":
            inside.set()
            finish.wait(5)
        reads("TrainingJob", obj("churn", "21"))  # its status write, as the API server answered it
        return True

    memo = kopf.Memo()
    first = threading.Thread(target=memos.run_pass, args=(memo, reconcile, "ml", "churn", "job event"))
    first.start()
    assert inside.wait(5)
    own = threading.Thread(
        target=memos.run_pass,
        args=(memo, reconcile, "ml", "churn", "own write"),
        kwargs={"brought": ("TrainingJob", obj("churn", "21"))},
    )
    own.start()
    finish.set()
    first.join(5)
    own.join(5)
    assert passes == ["job event"]
    memos.run_pass(memo, reconcile, "ml", "churn", "newer", brought=("TrainingJob", obj("churn", "22")))
    assert passes == ["job event", "newer"]


def test_the_clock_starts_no_pass_behind_one_under_way() -> None:
    """An object's first pass may take seconds (a FeatureView's imports Feast and registers it): a clock tick meanwhile
    finds it unsettled, and a pass queued behind it would find what it found. Once it ends, the clock decides by how
    it ended."""
    inside, finish = threading.Event(), threading.Event()
    settle = True

    def reconcile(namespace: str, name: str, reads: memos.Reads) -> bool:
        inside.set()
        finish.wait(5)
        return settle

    memo = kopf.Memo()
    assert memos.unsettled(memo), "never passed over"
    running = threading.Thread(target=memos.run_pass, args=(memo, reconcile, "ml", "churn"))
    running.start()
    assert inside.wait(5)
    assert not memos.unsettled(memo), "a pass is under way"
    finish.set()
    running.join(5)
    assert not memos.unsettled(memo), "it settled"
    settle = False
    memos.run_pass(memo, reconcile, "ml", "churn")
    assert memos.unsettled(memo), "it did not settle: the clock tries again"

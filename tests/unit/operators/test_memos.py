"""Per-object memory of the operators: the pass lock that a deleted object and its successor share."""

from __future__ import annotations

import gc

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

"""What an operator remembers about one custom resource: kopf's memo of that object.

kopf keeps a memo per object and drops it when the object goes, so nothing here needs cleaning
up after a deletion. The handlers of an object's children reach it through an index of memos
by (namespace, name) that each kind declares (``md_memos``, ``tj_memos``, ``fv_memos``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

LOCK = "kubeforge.lock"
"""Key of the lock that keeps two passes over one object from running at once (handlers run in threads)."""
SETTLED = "kubeforge.settled"
"""Key of when (monotonic) the object's last pass settled; absent after one that did not."""
RESYNC_S = 300.0
"""Longest time between two passes of an object that is waiting on events, as a safety net for a lost one."""


def memo_in(index: Mapping[Any, Any], namespace: str, name: str) -> kopf.Memo | None:
    """The memo an index of memos holds for (namespace, name); None before the object's first event and after
    it went. The index's values are collections that kopf may change from its loop, so this copies first."""
    return next(iter(list(index.get((namespace, name), ()))), None)


def lock_of(memo: kopf.Memo) -> threading.Lock:
    """The object's pass lock, made on first use (setdefault is atomic)."""
    return memo.setdefault(LOCK, threading.Lock())  # type: ignore[no-any-return]


def run_pass(memo: kopf.Memo, reconcile: Callable[..., bool], *args: Any) -> None:
    """reconcile(*args), remembering in memo whether it settled: it returned True. One that raised or returned
    False left something that only the clock will try again."""
    memo.pop(SETTLED, None)
    if reconcile(*args):
        memo[SETTLED] = time.monotonic()


def unsettled(memo: kopf.Memo) -> bool:
    """The clock must pass over the object: its last pass did not settle, or RESYNC_S passed since it did."""
    settled = memo.get(SETTLED)
    return settled is None or time.monotonic() - settled >= RESYNC_S

"""What an operator remembers about one custom resource: kopf's memo of that object.

kopf keeps a memo per object and drops it when the object goes, so nothing here needs cleaning
up after a deletion. The handlers of an object's children reach it through an index of memos
by (namespace, name) that each kind declares (``md_memos``, ``tj_memos``, ``fv_memos``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import kopf

LOCK = "kubeforge.lock"
"""Key of the lock that keeps two passes over one name from running at once (handlers run in threads)."""
SETTLED = "kubeforge.settled"
"""Key of when (monotonic) the object's last pass settled; absent after one that did not."""
SEEN = "kubeforge.seen"
"""Key of what the object's last settled pass read (:class:`Reads`); absent while a pass runs and after one that did
not settle."""
_Read = TypeVar("_Read", bound=Mapping[str, Any] | None)
Brought = tuple[str, Mapping[str, Any]]
"""The object an event brings, with its kind: what a pass it asks for may find it has read already."""
RESYNC_S = 300.0
"""Longest time between two passes of an object that is waiting on events, as a safety net for a lost one."""
MAX_RETRY_S = 60.0
"""Longest pause before a pass that raised is tried again (1, 2, 4 ... seconds until then)."""


@dataclass
class Retries:
    """An object's failed passes in a row, and when its clock tries again: kopf retries no event handler."""

    retries: int = 0
    """Failed passes in a row (the back-off grows with them)."""
    retry_at: float | None = None
    """When to try again after a failed pass (monotonic seconds)."""

    def failed(self, now: float, err: Exception) -> float:
        """Note a pass that raised err; how long until the next try: the delay err names (kopf.TemporaryError, e.g.
        a child not applied: see ChildNotApplied.retry_after), else 1, 2, 4 ... seconds up to MAX_RETRY_S."""
        named = err.delay if isinstance(err, kopf.TemporaryError) else None
        wait = min(2.0**self.retries, MAX_RETRY_S) if named is None else named
        self.retries += 1
        self.retry_at = now + wait
        return wait

    def passed(self) -> None:
        self.retries, self.retry_at = 0, None


def memo_in(index: Mapping[Any, Any], namespace: str, name: str) -> kopf.Memo | None:
    """The memo an index of memos holds for (namespace, name); None before the object's first event and after
    it went. The index's values are collections that kopf may change from its loop, so this copies first."""
    return next(iter(list(index.get((namespace, name), ()))), None)


class PassLock:
    """A lock for the passes over one name (a plain lock cannot be weakly referenced)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._lock.release()

    def busy(self) -> bool:
        """A pass over the name is under way."""
        return self._lock.locked()


_by_name: weakref.WeakValueDictionary[tuple[str, str], PassLock] = weakref.WeakValueDictionary()
_by_name_guard = threading.Lock()


def lock_of(memo: kopf.Memo, namespace: str, name: str) -> PassLock:
    """The lock of the passes over (namespace, name), kept in the object's memo. One per name, not per object: a
    pass reads the object by its name, so a pass started by a deleted object's last events and one of an object
    re-created under the same name must not run at once. It goes when no memo holds it any more."""
    lock = memo.get(LOCK)
    if lock is None:
        with _by_name_guard:
            lock = _by_name.get((namespace, name))
            if lock is None:
                lock = _by_name[(namespace, name)] = PassLock()
        lock = memo.setdefault(LOCK, lock)
    return lock


class Reads(dict[tuple[str, str], str]):
    """The resourceVersion of each object a pass read, by (kind, name): the object itself and the children it
    looked at."""

    def __call__(self, kind: str, obj: _Read) -> _Read:
        """obj, as read (None: not found), noted."""
        if obj is not None:
            self[(kind, obj["metadata"]["name"])] = obj["metadata"].get("resourceVersion", "")
        return obj


def run_pass(
    memo: kopf.Memo,
    reconcile: Callable[..., bool],
    namespace: str,
    name: str,
    *args: Any,
    brought: Brought | None = None,
) -> None:
    """reconcile(namespace, name, reads, *args) under the name's pass lock, remembering in memo whether it settled
    (it returned True) and what it read. One that raised or returned False left something that only the clock will
    try again.

    brought is the object (kind, body) of the event that asks for the pass: none runs when the last settled pass read
    it as it is (:func:`read_already`). That is decided under the lock, so an event that comes while a pass runs, such
    as the one of the pass's own status write, is weighed against what that pass read."""
    with lock_of(memo, namespace, name):
        if brought is not None and read_already(memo, *brought):
            return
        memo.pop(SETTLED, None)
        memo.pop(SEEN, None)
        reads = Reads()
        settled = reconcile(namespace, name, reads, *args)
        if settled:
            memo[SEEN] = reads
            memo[SETTLED] = time.monotonic()


def read_already(memo: kopf.Memo, kind: str, obj: Mapping[str, Any]) -> bool:
    """Whether the last settled pass over memo's object read obj (of kind) as this event brings it: a pass now would
    find nothing that one did not, since whatever else it reads brings its own event or the clock's pass when it
    changes. An operator that starts gets every object's first event and every child's at once, the same versions
    twice over."""
    meta = obj.get("metadata") or {}
    version = meta.get("resourceVersion")
    return version is not None and (memo.get(SEEN) or {}).get((kind, meta.get("name"))) == version


def unsettled(memo: kopf.Memo) -> bool:
    """The clock must pass over the object: its last pass did not settle, or RESYNC_S passed since it did; not while
    a pass is under way (its outcome is not known yet, and a pass queued behind it would find what it found)."""
    lock = memo.get(LOCK)
    if lock is not None and lock.busy():
        return False
    settled = memo.get(SETTLED)
    return settled is None or time.monotonic() - settled >= RESYNC_S

"""kopf's "every object indexed" gate, woken when it opens instead of once per object.

kopf (1.45) holds every resource handler until the index handlers have seen every object the operator started
with: a ``ToggleSet(all)`` with one toggle per object not indexed yet, dropped once the object is indexed, and the
object's worker then waits on the set's condition. Adding or dropping a toggle notifies every waiter, and each wakes
to find the gate still closed, so N objects cost N² wake-ups: an operator started again over 2,000 ModelDeployments
(6,000 objects with their Deployments) spent 212 s of CPU, most of it waking workers, before it handled anything
(docs/benchmarks.md, Operator, round twelve). Waiters wait for the set's state (``ToggleSet.wait_for``) or for one
toggle's own (``Toggle.wait_for``); adding or dropping a toggle changes no toggle's own state, so only a change of the
set's state needs to wake anyone. :func:`install` replaces the set's three methods that add and drop toggles with
ones that notify only then; everything else is kopf's (tests/unit/operators/test_indexgate.py pins what is relied
on)."""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        was = self.is_on()
        self._toggles.add(toggle)
        _notify_if_changed(self, was)
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        was = self.is_on()
        self._toggles.discard(toggle)
        _notify_if_changed(self, was)


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        was = self.is_on()
        self._toggles.difference_update(toggles)
        _notify_if_changed(self, was)


def _notify_if_changed(toggles: aiotoggles.ToggleSet, was: bool) -> None:
    if toggles.is_on() != was:
        toggles._condition.notify_all()


def install() -> None:
    """Replace kopf's ToggleSet methods that add and drop toggles (idempotent)."""
    aiotoggles.ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]

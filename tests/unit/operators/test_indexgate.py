"""kopf's "every object indexed" gate with indexgate installed: the workers waiting at it are woken once, when it
opens, and at no other time; a toggle's own waiters still wake when it is turned."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from kubeforge.operators import indexgate

OBJECTS = 200


def test_workers_waiting_at_the_gate_wake_once_when_the_last_object_is_indexed() -> None:
    indexgate.install()

    async def scenario() -> tuple[int, list[bool]]:
        gate = aiotoggles.ToggleSet(all)
        checks = 0
        is_on = gate.is_on

        def counted() -> bool:
            nonlocal checks
            checks += 1
            return is_on()

        gate.is_on = counted  # type: ignore[method-assign]
        blocker = await gate.make_toggle(name="listing")  # as kopf's orchestration holds it while it lists
        toggles = [await gate.make_toggle(name=f"object {i}") for i in range(OBJECTS)]
        waiters = [asyncio.create_task(gate.wait_for(True)) for _ in range(OBJECTS)]
        await gate.drop_toggle(blocker)
        for toggle in toggles[:-1]:  # kopf drops each once its object is indexed
            await gate.drop_toggle(toggle)
            await asyncio.sleep(0)
        released_early = [w.done() for w in waiters]
        await gate.drop_toggles(toggles[-1:])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return checks, released_early

    checks, released_early = asyncio.run(scenario())
    assert not any(released_early), "the gate stays closed while an object is not indexed"
    # Each waiter checks once on entering and once on waking; each add or drop checks twice. Without the change,
    # every add or drop woke every waiter: over OBJECTS² checks.
    assert checks <= 2 * OBJECTS + 2 * (2 * OBJECTS + 2)


def test_a_toggles_own_waiters_and_a_gate_closing_again_still_wake() -> None:
    indexgate.install()

    async def scenario() -> None:
        gate = aiotoggles.ToggleSet(all)
        toggle = await gate.make_toggle(name="pause")
        own = asyncio.create_task(toggle.wait_for(True))
        await asyncio.sleep(0)
        await toggle.turn_to(True)
        await asyncio.wait_for(own, 5)
        await gate.drop_toggle(toggle)
        closed = asyncio.create_task(gate.wait_for(False))
        await asyncio.sleep(0)
        assert not closed.done()
        await gate.make_toggle(False, name="a new object")
        await asyncio.wait_for(closed, 5)

    asyncio.run(scenario())

"""When the operator hands its free heap back to the system: at the end of a burst, not while idle or busy."""

from __future__ import annotations

import platform

import pytest

from kubeforge.operators import heap


@pytest.mark.parametrize(
    ("before", "then", "now", "ended"),
    [
        (0.0, 5.0, 5.1, True),  # 5 s of CPU, then quiet: the burst is over
        (0.0, 5.0, 9.0, False),  # still busy
        (0.0, 0.2, 0.3, False),  # idle all along: nothing to hand back, no call
        (0.0, 0.2, 5.0, False),  # a burst starting
    ],
)
def test_a_burst_ends_when_a_busy_period_is_followed_by_a_quiet_one(
    before: float, then: float, now: float, ended: bool
) -> None:
    assert heap.burst_ended(before, then, now) is ended


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_is_found_and_returns_whether_memory_was_released() -> None:
    trim = heap.malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)

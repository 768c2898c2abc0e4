"""Ports the local runtime picks for the servers it starts."""

from __future__ import annotations

import contextlib
import socket

import pytest

from kubeforge.local import processes


def test_picked_ports_differ_and_stay_clear_of_the_ports_outgoing_connections_take() -> None:
    """A server bound to a port an outgoing connection took a moment earlier fails with 'address already in use'
    (an API server did so under a busy run); picks avoid the kernel's ephemeral range and each other."""
    low, high = processes._ephemeral()
    picks = [processes.free_port() for _ in range(50)]
    assert len(set(picks)) == len(picks)
    assert all(processes.LOWEST_PORT <= p < low or high < p <= 65535 for p in picks), picks
    with socket.socket() as s:  # and each can be bound
        s.bind(("127.0.0.1", picks[-1]))


def test_a_port_something_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pick is random; make it land on a port that is in use first, then on one that is not."""
    with socket.socket() as held:
        for port in range(processes.LOWEST_PORT + 1000, processes.LOWEST_PORT + 2000):
            with contextlib.suppress(OSError):
                held.bind(("127.0.0.1", port))
                break
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken + 1])
        monkeypatch.setattr(processes, "_given", set())
        monkeypatch.setattr(processes._random, "randint", lambda a, b: next(draws))
        assert processes.free_port() == taken + 1

"""The runner tests' namespaces are labelled so the shared runner (tests/conftest.py) runs their workloads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Kubectl, RunnerProcess, runner_enabled


@pytest.fixture
def namespace(namespace: str, kubectl: Kubectl, runner: RunnerProcess) -> Iterator[str]:
    """The session's fresh namespace, opted in to the local runner for the test."""
    with runner_enabled(kubectl, namespace):
        yield namespace

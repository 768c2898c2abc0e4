"""The runner tests' namespaces are labelled so the shared runner (tests/conftest.py) runs their workloads."""

from __future__ import annotations

import pytest

from tests.conftest import RUNNER_NAMESPACE_LABEL, Kubectl, RunnerProcess


@pytest.fixture
def namespace(namespace: str, kubectl: Kubectl, runner: RunnerProcess) -> str:
    """The session's fresh namespace, opted in to the local runner."""
    kubectl("label", "namespace", namespace, RUNNER_NAMESPACE_LABEL)
    return namespace

"""A canary whose Triton dies mid-step, on the real data plane.

The canary's tritonserver is killed with SIGKILL under tritonclient traffic. The gateway's
fallback answers every request, the local runner restarts Triton, the operator takes the
canary's traffic away while it is down (each analysis interval a failed check), starts the
step over when it is back, and the rollout finishes by itself.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.local.processes import alive, find
from kubeforge.local.runner.state import RunnerState
from tests.conftest import RunnerProcess
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_modeldeployment_operator import create_md, model, ready, status, traffic

pytestmark = pytest.mark.integration
NAME = "phoenix"
# Sixty failed checks in a row, two seconds apart, before a rollback leave a restarting Triton (about 20 s
# on a busy two-core machine) ample time, so the outcome is a promotion once the step has started over.
CANARY = {
    "model": {"name": NAME, "alias": "candidate"},
    "steps": [{"weight": 50, "pause": "6s"}],
    "scaleDownDelay": "1s",
    "analysis": {
        "interval": "2s",
        "failureLimit": 60,
        "minRequests": 5,
        "metrics": [{"name": "error-rate", "max": 0.01}],
    },
}


def tritonserver(runner: RunnerProcess, namespace: str, deployment: str) -> int:
    """The pid of the tritonserver process (not its wrapper) of the deployment's local pod."""
    pods = RunnerState.load(runner.data_dir / "runner").pods.values()
    pod_dir = next(p.dir for p in pods if p.namespace == namespace and p.name.startswith(f"{deployment}-"))
    pids = find(lambda argv: Path(argv[0]).name == "tritonserver" and any(pod_dir in a for a in argv))
    assert len(pids) == 1, pids
    return pids[0]


def counters(url: str, name: str, version: str, label: str, values: tuple[str, ...]) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels.get("version") == version and s.labels.get(label) in values
    )


def progressing(st: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == "Progressing"), {})


def test_a_canary_whose_triton_is_killed_mid_step_starts_the_step_over_and_is_promoted(
    operator: Operator, api: client.ApiClient, runner_namespace: str, runner: RunnerProcess, mlflow
) -> None:
    ns = runner_namespace
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    model(mlflow, registry, NAME, [0.0, 0.0], {"champion": 1})
    create_md(api, ns, NAME, model={"name": NAME, "alias": "champion"}, canary=CANARY)
    gateway = ready(api, ns, NAME)["url"].split("/v2/")[0]
    caller = traffic(api, ns, NAME)
    seen: list[dict[str, Any]] = []

    def reached(done: Any) -> Any:
        def check() -> bool:
            st = status(api, ns, NAME)
            seen.append(st)
            return done(st)

        return check

    try:
        registry.set_registered_model_alias(NAME, "candidate", "2")
        wait_for(reached(lambda st: st.get("canaryWeight") == 50), 120, "canary at 50%")
        wait_for(lambda: any(s.version == "2" for s in caller.samples), 30, "the canary answering callers")
        killed = tritonserver(runner, ns, f"{NAME}-v2")
        os.kill(killed, signal.SIGKILL)
        wait_for(reached(lambda st: progressing(st).get("reason") == "CanaryNotReady"), 30, "step interrupted")
        wait_for(reached(lambda st: progressing(st).get("reason") == "StepRestarted"), 60, "step started over")
        restarted = tritonserver(runner, ns, f"{NAME}-v2")
        wait_for(reached(lambda st: st.get("stableVersion") == "2"), 60, "promotion of version 2")
    finally:
        caller.stop()

    assert not [s for s in caller.samples if not s.ok], "fallback answers every request while the canary is down"
    assert restarted != killed and alive(restarted), "the runner restarted the canary's Triton"
    final = status(api, ns, NAME)
    assert "rolledBackVersion" not in final
    assert progressing(final)["reason"] == "CanaryPromoted"

    interrupted = [st for st in seen if progressing(st).get("reason") == "CanaryNotReady"]
    assert interrupted and all(st["canaryWeight"] == 0 for st in interrupted)
    message = progressing(interrupted[-1])["message"]
    assert re.search(r"Triton of version 2 not ready since \S+Z, no traffic to it", message), message
    assert re.search(r"rolled back after \d+ more unless it serves again first", message), message
    for st in seen:
        if not st.get("canaryWeight"):
            assert "% of traffic" not in progressing(st).get("message", ""), st
            assert [t["role"] for t in st.get("traffic", [])] == ["stable"], st
    checks = [r for st in interrupted for r in st.get("analysis", {}).get("results", [])]
    assert {"name": "canary-ready", "value": 0.0, "threshold": ">= 1", "passed": False} in checks
    assert any(
        r["name"] == "error-rate" and r.get("passed") is False
        for st in seen
        for r in st.get("analysis", {}).get("results", [])
    ), "the requests fallback rescued count against the canary"

    # Every request the fallback answered for the canary is a failed try of the canary: it was tried and
    # failed, or the gateway knew it was down and did not try it.
    rescued = counters(gateway, "kubeforge_fallbacks_total", "2", "reason", ("error", "timeout", "not_ready"))
    failed = counters(gateway, "kubeforge_upstream_requests_total", "2", "outcome", ("error", "timeout", "not_ready"))
    assert rescued > 0 and failed == rescued

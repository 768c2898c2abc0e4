"""The Argo CD health check, run by a real Lua 5.1 interpreter on statuses the operators write."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest

from kubeforge.core.kube import Capabilities
from kubeforge.operators.deployment.rollout import Observed, Resolved
from kubeforge.operators.deployment.rollout import plan as md_plan
from kubeforge.operators.settings import Settings
from kubeforge.operators.training.plan import plan as tj_plan
from tests.conftest import REPO

SCRIPT = REPO / "platform" / "argocd" / "health-kubeforge.lua"
DRIVER = """
local cjson = require("cjson")
obj = cjson.decode(io.read("*a"))
local check = assert(loadfile(os.getenv("HEALTH_SCRIPT")))
local hs = check()
io.write(cjson.encode(hs))
"""
SETTINGS = Settings("http://mlflow", "img", "triton", "img", "http://prom")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def health(obj: dict[str, Any]) -> dict[str, str]:
    proc = subprocess.run(
        ["lua5.1", "-e", DRIVER],
        input=json.dumps(obj),
        env={**os.environ, "HEALTH_SCRIPT": str(SCRIPT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def md(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"name": "m", "alias": "a"}, **spec},
    }


def with_status(obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "status": status}


SERVING = Observed(frozenset({"1", "2"}), {"1": "http://a", "2": "http://b"}, True, "http://gw", True)


def test_model_deployment_health_follows_the_rollout() -> None:
    obj = md()
    assert health(obj)["status"] == "Progressing"  # no status yet
    waiting = md_plan(obj, Resolved(stable="1"), Observed(), None, SETTINGS, NOW).status
    assert health(with_status(obj, waiting))["status"] == "Progressing"
    serving = md_plan(obj, Resolved(stable="1"), SERVING, None, SETTINGS, NOW).status
    assert health(with_status(obj, serving)) == {"status": "Healthy", "message": "Serving: version 1 is serving"}
    canary = md(canary={"model": {"name": "m", "alias": "c"}, "steps": [{"weight": 50}]})
    rolling = md_plan(with_status(canary, serving), Resolved(stable="1", canary="2"), SERVING, None, SETTINGS, NOW)
    assert health(with_status(canary, rolling.status))["status"] == "Progressing"
    failed = [{"name": "error-rate", "threshold": "<= 0.01", "value": 0.5, "passed": False}]
    body = with_status(canary, {**rolling.status, "analysis": {"failedChecks": 1}})
    rolled_back = md_plan(body, Resolved(stable="1", canary="2"), SERVING, failed, SETTINGS, NOW).status
    verdict = health(with_status(canary, rolled_back))
    assert verdict["status"] == "Degraded" and "error-rate = 0.5" in verdict["message"]


def test_a_version_awaiting_approval_is_suspended_naming_the_command() -> None:
    gated = md(policy={"requireApproval": True})
    waiting = md_plan(gated, Resolved(stable="1"), SERVING, None, SETTINGS, NOW).status
    verdict = health(with_status(gated, waiting))
    assert verdict["status"] == "Suspended" and "kubeforge model approve m 1" in verdict["message"], verdict


def test_invalid_spec_is_degraded() -> None:
    obj = md(replicas=-1)
    status = md_plan(obj, Resolved(), Observed(), None, SETTINGS, NOW).status
    verdict = health(with_status(obj, status))
    assert verdict["status"] == "Degraded" and "spec.replicas" in verdict["message"]


def test_stale_status_is_progressing() -> None:
    obj = md()
    serving = md_plan(obj, Resolved(stable="1"), SERVING, None, SETTINGS, NOW).status
    newer = {**obj, "metadata": {**obj["metadata"], "generation": 2}, "status": serving}
    assert health(newer)["status"] == "Progressing"


@pytest.mark.parametrize(
    ("phase_reached", "expected"),
    [("running", "Progressing"), ("failed", "Degraded"), ("suspended", "Suspended")],
)
def test_training_job_health(phase_reached: str, expected: str) -> None:
    obj = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"name": "t", "architecture": "mlp"}, "dataset": {"uri": "/d.csv", "target": "y"}},
    }
    if phase_reached == "failed":
        obj["spec"]["dataset"] = {"uri": "/d.parquet", "format": "csv", "target": "y"}
    if phase_reached == "suspended":
        obj["spec"]["suspend"] = True
    status = tj_plan(obj, None, SETTINGS, Capabilities(1, 30), NOW).status
    assert health(with_status(obj, status))["status"] == expected

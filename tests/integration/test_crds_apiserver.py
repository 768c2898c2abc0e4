"""The generated CRDs against a real kube-apiserver: what `kubectl apply` users see."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.samples import INVALID, VALID, expected_field, names_field

pytestmark = pytest.mark.integration


def test_valid_samples_apply_and_show_printer_columns(crds_installed: None, kubectl: Kubectl, namespace: str) -> None:
    out = kubectl("apply", "-n", namespace, "-f", str(REPO / "crds" / "samples")).stdout
    assert out.count("created") == len(VALID)
    table = kubectl("get", "tj,md,fv", "-n", namespace).stdout
    for column in ("MODEL", "PHASE", "READY", "VERSION", "ATTEMPTS", "STABLE", "CANARY", "WEIGHT", "MATERIALIZED"):
        assert column in table, table
    for path in VALID:
        assert yaml.safe_load(path.read_text())["metadata"]["name"] in table
    # The category groups all three kinds.
    assert kubectl("get", "kubeforge", "-n", namespace, "-o", "name").stdout.count("\n") == len(VALID)


def test_api_server_fills_in_defaults(crds_installed: None, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "crds" / "samples" / "trainingjob-diabetes-ddp-gpu.yaml"))
    spec = json.loads(kubectl("get", "tj", "diabetes-ddp", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["model"]["hyperparameters"]["batchSize"] == 64
    assert spec["dataset"]["validationSplit"] == 0.2


def test_explain_shows_field_docs(crds_installed: None, kubectl: Kubectl) -> None:
    # The API server publishes a new CRD's OpenAPI schema, which explain reads, a while after it is Established.
    deadline = time.monotonic() + 60
    while kubectl("explain", "modeldeployment.spec", check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    text = kubectl("explain", "modeldeployment.spec").stdout
    assert "Roll a new version out progressively, gated by metrics." in text
    assert "model\t<Object> -required-" in text
    canary = kubectl("explain", "md.spec.canary.steps.weight").stdout
    assert "Percent of live traffic sent to the canary during this step." in canary


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_kubectl_apply_rejects_invalid_sample_naming_the_field(
    crds_installed: None, kubectl: Kubectl, namespace: str, path: Path
) -> None:
    proc = kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert names_field(proc.stderr, expected_field(path)), proc.stderr
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert kubectl("get", "kubeforge", name, "-n", namespace, check=False).returncode != 0, "half-created"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_api_server_alone_rejects_invalid_sample(
    crds_installed: None, kubectl: Kubectl, namespace: str, path: Path
) -> None:
    """Without kubectl's client-side check (--validate=false), the server's schema is the gate."""
    proc = kubectl("apply", "--validate=false", "-n", namespace, "-f", str(path), check=False)
    field = expected_field(path)
    if path.name.endswith("unknown-field.yaml"):
        # A 1.20 API server prunes unknown fields instead of rejecting them (strict field
        # validation came in 1.25, where kubectl's default --validate=strict rejects them
        # server-side). Pruned means nothing of it is stored.
        assert proc.returncode == 0, proc.stderr
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        stored = json.loads(kubectl("get", "tj", name, "-n", namespace, "-o", "json").stdout)
        assert field.rsplit(".", 1)[1] not in json.dumps(stored["spec"])
        return
    assert proc.returncode != 0, f"{path.name} was accepted by the API server"
    assert names_field(proc.stderr, field), proc.stderr


def test_cli_applies_crds_server_side_idempotently(crds_installed: None, controlplane) -> None:
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "kubeforge.cli", "crds", "apply", "--kubeconfig", str(controlplane.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("applied") == 3

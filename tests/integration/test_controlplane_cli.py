"""`kubeforge controlplane up|status|down` as a user runs them, in a separate data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubeforge.local.controlplane import read_state
from kubeforge.local.processes import alive, listening

pytestmark = pytest.mark.integration


def kubeforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeforge.cli", *args], capture_output=True, text=True, timeout=180)


def test_up_status_down(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    up = kubeforge("controlplane", "up", "--data-dir", str(data))
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={data / 'kubeconfig'}" in up.stdout
        state = read_state(data)
        assert state is not None

        # kubectl works with the printed kubeconfig, and a second `up` does not start a second one.
        env = {**os.environ, "KUBECONFIG": str(data / "kubeconfig")}
        ns = subprocess.run(["kubectl", "get", "namespaces"], env=env, capture_output=True, text=True, timeout=60)
        assert ns.returncode == 0 and "default" in ns.stdout, ns.stderr
        again = kubeforge("controlplane", "up", "--data-dir", str(data))
        assert "already running" in again.stdout
        assert read_state(data) == state

        status = kubeforge("controlplane", "status", "--data-dir", str(data))
        assert status.returncode == 0 and state.server in status.stdout
    finally:
        down = kubeforge("controlplane", "down", "--data-dir", str(data))
    assert down.returncode == 0, down.stderr
    assert not alive(state.apiserver_pid) and not alive(state.etcd_pid)
    assert not listening(state.apiserver_port) and not listening(state.etcd_port)
    status = kubeforge("controlplane", "status", "--data-dir", str(data))
    assert status.returncode == 1 and "not running" in status.stdout


def test_data_survives_down_and_up(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    env = {**os.environ, "KUBECONFIG": str(data / "kubeconfig")}
    try:
        assert kubeforge("controlplane", "up", "--data-dir", str(data)).returncode == 0
        subprocess.run(["kubectl", "create", "namespace", "keep-me"], env=env, check=True, capture_output=True)
        before = read_state(data)
        assert kubeforge("controlplane", "down", "--data-dir", str(data)).returncode == 0
        assert kubeforge("controlplane", "up", "--data-dir", str(data)).returncode == 0
        got = subprocess.run(["kubectl", "get", "namespace", "keep-me"], env=env, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        after = read_state(data)
        assert before and after and after.server == before.server  # the address clients hold stays valid
    finally:
        kubeforge("controlplane", "down", "--data-dir", str(data))


@pytest.mark.parametrize("killed", ["etcd", "kube-apiserver"])
def test_up_replaces_a_control_plane_that_is_half_there(killed: str, tmp_path: Path) -> None:
    """One of the two processes killed: status says the control plane is not running, and `up` starts it anew with
    its data, the survivor stopped first (an API server left behind would make up refuse, an etcd left behind would
    hold its data directory's lock)."""
    data = tmp_path / "cp"
    env = {**os.environ, "KUBECONFIG": str(data / "kubeconfig")}
    try:
        assert kubeforge("controlplane", "up", "--data-dir", str(data)).returncode == 0
        subprocess.run(["kubectl", "create", "namespace", "keep-me"], env=env, check=True, capture_output=True)
        before = read_state(data)
        assert before is not None
        os.kill(before.etcd_pid if killed == "etcd" else before.apiserver_pid, signal.SIGKILL)
        status = kubeforge("controlplane", "status", "--data-dir", str(data))
        assert status.returncode == 1 and "not running" in status.stdout
        up = kubeforge("controlplane", "up", "--data-dir", str(data))
        assert up.returncode == 0, up.stderr
        after = read_state(data)
        assert after is not None and after.apiserver_pid != before.apiserver_pid
        assert not alive(before.apiserver_pid) and not alive(before.etcd_pid), "the old processes are gone"
        got = subprocess.run(["kubectl", "get", "namespace", "keep-me"], env=env, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
    finally:
        kubeforge("controlplane", "down", "--data-dir", str(data))

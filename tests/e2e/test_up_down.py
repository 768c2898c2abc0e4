"""`kubeforge up` and `down` end to end, in a temporary data directory."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from kubeforge.api import crdgen
from kubeforge.local import runtime
from kubeforge.local.processes import alive
from tests.integration.operators.conftest import wait_for


def _sessions(sids: set[int]) -> list[Path]:
    """/proc entries of the live processes in the given sessions (each part runs in a session of its own).

    Zombies do not count: they hold no sockets, and here nothing may be left to reap them."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split() if proc.name.isdigit() else []
            if fields and fields[0] != "Z" and int(fields[3]) in sids:
                found.append(proc)
        except OSError:
            continue
    return found


def _address(hex_address: str) -> str:
    """An address from /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = b"".join(bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to 127.0.0.1
    return str(mapped or address)


def listening_sockets(sids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets that processes of the given sessions listen on."""
    inodes = set()
    for proc in _sessions(sids):
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if (link := os.readlink(fd)).startswith("socket:["):
                        inodes.add(link[8:-1])
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            if row[3] == "0A" and row[9] in inodes:  # LISTEN
                address, port = row[1].rsplit(":", 1)
                sockets.add((_address(address), int(port, 16)))
    return sockets


def listening_ports(sids: set[int]) -> set[int]:
    """TCP ports that processes of the given sessions listen on (from /proc/net/tcp{,6} and their fds)."""
    return {port for _, port in listening_sockets(sids)}


def all_listening_ports() -> set[int]:
    return {
        int(row[1].rsplit(":", 1)[1], 16)
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for row in (line.split() for line in Path(table).read_text().splitlines()[1:])
        if row[3] == "0A"
    }


def local(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBEFORGE_DATA_DIR": str(data_dir)}
    argv = [sys.executable, "-m", "kubeforge.local.commands", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)


def recorded_pids(data_dir: Path) -> list[int]:
    state = json.loads((data_dir / "local.json").read_text())
    cp = json.loads((data_dir / "controlplane" / "controlplane.json").read_text())
    parts = ("mlflow_pid", "operator_pid", "runner_pid", "prometheus_pid", "alertmanager_pid", "supervisor_pid")
    return [state[k] for k in parts] + [cp["etcd_pid"], cp["apiserver_pid"]]


@pytest.mark.timeout(400)
def test_up_status_down(tmp_path):
    up = local(tmp_path, "up")
    try:
        assert up.returncode == 0, up.stderr
        export = next(line for line in up.stdout.splitlines() if line.startswith("export KUBECONFIG="))
        kubeconfig = export.split("=", 1)[1]
        mlflow_url = next(line.split()[-1] for line in up.stdout.splitlines() if line.startswith("MLflow UI:"))
        pids = recorded_pids(tmp_path)

        crds = subprocess.run(
            ["kubectl", "get", "crd", "-o", "name"],
            env={**os.environ, "KUBECONFIG": kubeconfig},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for kind in crdgen.KINDS:
            assert f"customresourcedefinition.apiextensions.k8s.io/{kind.crd.crd_name}" in crds
        with urllib.request.urlopen(f"{mlflow_url}/health", timeout=5) as resp:
            assert resp.status == 200

        status = local(tmp_path, "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running") == 7  # six parts and the supervisor

        # Prometheus scrapes the operators and evaluates kubeforge's rules; Alertmanager is its receiver.
        prometheus = next(line.split()[-1] for line in up.stdout.splitlines() if line.startswith("Prometheus:"))
        wait_for(lambda: _operator_scraped(prometheus), 60, "the operators scraped by Prometheus")
        alertmanagers = _get_json(f"{prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        assert [a["url"].startswith("http://127.0.0.1:") for a in alertmanagers] == [True]

        again = local(tmp_path, "up")  # warm: everything is reused
        assert again.returncode == 0, again.stderr
        assert recorded_pids(tmp_path) == pids
        sockets = listening_sockets(set(pids))
        ours = {port for _, port in sockets}
        assert len(ours) >= 7  # API server, etcd, MLflow, operator health and metrics, Prometheus, Alertmanager
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        down = local(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if alive(pid)]
    assert not _sessions(set(pids))  # nothing of any part (MLflow's workers included) is left
    assert not ours & all_listening_ports()
    assert local(tmp_path, "status").returncode == 1
    assert (tmp_path / "controlplane" / "etcd").is_dir()  # data survives down


@pytest.mark.timeout(400)
def test_a_failed_up_stops_what_it_started_and_names_the_part(tmp_path):
    # etcd cannot use its data directory (a file stands where the directory should be): the
    # control plane fails while MLflow, started beside it, comes up.
    (tmp_path / "controlplane").mkdir()
    (tmp_path / "controlplane" / "etcd").write_text("not a directory")
    failed = local(tmp_path, "up")
    assert failed.returncode == 1
    assert "control plane failed to start: etcd exited with code" in failed.stderr, failed.stderr
    assert "Stopped what this `up` had started (MLflow)" in failed.stderr
    assert not runtime.leftovers(tmp_path), "a failed up leaves nothing running"
    state = json.loads((tmp_path / "local.json").read_text())
    assert state["mlflow_pid"] == 0 and state["mlflow_port"]

    (tmp_path / "controlplane" / "etcd").unlink()
    up = local(tmp_path, "up")
    try:
        assert up.returncode == 0, up.stderr
        again = json.loads((tmp_path / "local.json").read_text())
        assert again["mlflow_port"] == state["mlflow_port"]  # one MLflow, on the port it had
    finally:
        local(tmp_path, "down")
    assert not runtime.leftovers(tmp_path)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _operator_scraped(prometheus: str) -> bool:
    targets = _get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    return any(t["labels"]["job"] == "kubeforge-operator" and t["health"] == "up" for t in targets)


@pytest.mark.timeout(400)
def test_the_supervisor_starts_again_what_stops_and_says_why_when_it_cannot(tmp_path):
    """kill -9 of parts, with no `up` after it: they run again within a minute, at the addresses users were given."""
    assert local(tmp_path, "up").returncode == 0
    try:
        state, cp = _states(tmp_path)
        for pid in (state["operator_pid"], state["mlflow_pid"], cp["apiserver_pid"]):
            os.kill(pid, signal.SIGKILL)

        def restarted() -> str:
            """The supervisor's line once every part runs again and it has recorded the restart (a moment after)."""
            status = local(tmp_path, "status")
            line = status.stdout.splitlines()[-1]
            return line if status.returncode == 0 and " again at " in line else ""

        supervisor = wait_for(restarted, 90, "every part running again, and the supervisor saying so")
        assert "started control plane, MLflow, operators" in supervisor, supervisor
        again, cp_again = _states(tmp_path)
        assert again["operator_pid"] != state["operator_pid"] and cp_again["apiserver_pid"] != cp["apiserver_pid"]
        assert again["mlflow_port"] == state["mlflow_port"]  # tracking URIs in use stay valid
        assert cp_again["apiserver_port"] == cp["apiserver_port"]  # and the kubeconfig's address
        with urllib.request.urlopen(f"http://127.0.0.1:{again['mlflow_port']}/health", timeout=5) as resp:
            assert resp.status == 200

        # A part that cannot start (a file where Prometheus's storage should be): status names it and why, and it
        # starts once it can.
        storage = tmp_path / "prometheus" / "data"
        storage.rename(storage.with_suffix(".saved"))
        storage.write_text("not a directory")
        os.kill(again["prometheus_pid"], signal.SIGKILL)

        def failure() -> str:
            line = local(tmp_path, "status").stdout.splitlines()[-1]
            return line if "could not start Prometheus" in line else ""

        said = wait_for(failure, 60, "the supervisor's failure in status")
        assert "Prometheus failed to start" in said and "(tries again)" in said, said
        assert local(tmp_path, "status").returncode == 1
        storage.unlink()
        storage.with_suffix(".saved").rename(storage)
        wait_for(lambda: local(tmp_path, "status").returncode == 0, 120, "Prometheus running again once it could")

        # The supervisor itself killed: status says so, and `up` starts it again.
        os.kill(_states(tmp_path)[0]["supervisor_pid"], signal.SIGKILL)
        status = local(tmp_path, "status")
        assert status.returncode == 1 and "supervisor     stopped" in status.stdout, status.stdout
        assert local(tmp_path, "up").returncode == 0
        assert alive(_states(tmp_path)[0]["supervisor_pid"])

        # Hung, not dead (SIGSTOP: the process runs, its port takes connections, nothing answers): the operators, the
        # runner and the API server are stopped for not answering their health URLs, started again, and status says
        # why.
        hung, cp_hung = _states(tmp_path)
        for pid in (hung["operator_pid"], hung["runner_pid"], cp_hung["apiserver_pid"]):
            os.kill(pid, signal.SIGSTOP)
        said = wait_for(
            lambda: " did not answer " in (line := restarted()) and line,
            180,
            "the hung parts running again, and the supervisor saying why",
        )
        assert "started control plane, operators" in said, said
        assert f"control plane did not answer https://127.0.0.1:{cp_hung['apiserver_port']}/livez 3 times" in said
        assert f"operators did not answer http://127.0.0.1:{hung['operator_port']}/healthz 3 times" in said, said
        assert f"runner did not answer http://127.0.0.1:{hung['runner_port']}/healthz 3 times" in said, said
        again, cp_again = _states(tmp_path)
        assert not any(alive(pid) for pid in (hung["operator_pid"], hung["runner_pid"], cp_hung["apiserver_pid"]))
        assert cp_again["apiserver_port"] == cp_hung["apiserver_port"]
    finally:
        local(tmp_path, "down")
    assert not runtime.leftovers(tmp_path)


def _states(data_dir: Path) -> tuple[dict, dict]:
    """local.json and the control plane's state."""
    cp = json.loads((data_dir / "controlplane" / "controlplane.json").read_text())
    return json.loads((data_dir / "local.json").read_text()), cp


def _of_data_dir(data_dir: Path) -> dict[int, int]:
    """{pid: process group} of every live process whose command line or environment names data_dir."""
    found = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split() if proc.name.isdigit() else []
            named = str(data_dir).encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            if fields and fields[0] != "Z" and named and int(proc.name) != os.getpid():
                found[int(proc.name)] = int(fields[2])
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("moment", ["controlplane/logs/etcd.log", "logs/operator.log"])
def test_an_up_killed_at_any_moment_leaves_nothing_that_the_next_up_trips_on_or_down_misses(tmp_path, moment):
    """kill -9 of `kubeforge up` as it starts etcd (beside MLflow), or the operators: what it started is not recorded
    yet. The next `up` starts each part once (an etcd left running would hold its data directory, an operator would
    run twice), and `down` leaves no process of the data directory."""
    env = {**os.environ, "KUBEFORGE_DATA_DIR": str(tmp_path)}
    up = subprocess.Popen([sys.executable, "-m", "kubeforge.local.commands", "up"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / moment).exists(), 120, f"`up` at {moment}")
    finally:
        up.kill()
        up.wait()
    assert _of_data_dir(tmp_path), "the killed `up` left parts running"
    try:
        again = local(tmp_path, "up")
        assert again.returncode == 0, again.stderr
        assert local(tmp_path, "status").returncode == 0
        groups = set(recorded_pids(tmp_path))
        assert {pid: group for pid, group in _of_data_dir(tmp_path).items() if group not in groups} == {}
    finally:
        local(tmp_path, "down")
    assert _of_data_dir(tmp_path) == {}

"""Child processes of the local runtime: ports, start, readiness, stop.

Every server kubeforge starts locally (etcd, kube-apiserver, MLflow, Triton, the
gateway) goes through these helpers, so all of them log to a file, run in their own
session (a Ctrl-C in the terminal does not half-kill them) and stop the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000
"""Below this are the ports other services are configured on by convention; no pick goes there."""

_given: set[int] = set()
_random = random.Random()  # its own: a caller seeding the shared generator (tests do) must not make picks repeat


def _ephemeral() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux; the usual default where it cannot be read)."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the kernel's ephemeral range.

    The server it is for binds it moments later. A port the kernel picked (bind to 0) comes from the range it
    also gives every outgoing connection, so on a busy machine a client's connection can take it in between
    and the server fails with 'address already in use'; outside that range only another pick can. Ports
    handed out by this process are not handed out again, so several picks in a row differ.
    """
    low, high = _ephemeral()
    ranges = [(LOWEST_PORT, low - 1), (high + 1, 65535)]
    ports = [(a, b) for a, b in ranges if b > a]
    for _ in range(200 if ports else 0):
        a, b = _random.choice(ports)
        port = _random.randint(a, b)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:  # no room outside the range (an unusual kernel setting): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could listen on port now: it sets SO_REUSEADDR, as servers do, so connections
    of its previous run still in TIME_WAIT do not count as taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening(port: int, timeout: float = 2.0) -> bool:
    """Whether something on 127.0.0.1 takes connections on port now (a process can be alive and no longer
    serving, e.g. an API server on its way out after SIGTERM)."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


PROCESS_LOCAL = frozenset({"PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir"})
"""Variables a library sets in its own process's environment, for that process alone. Feast, when imported,
points the Prometheus client at a temporary directory of its importer (feast.metrics): a gateway or operator
started from that process would keep every metric in mapped files there, each update a file write, and lose
them when the importer exits. No process started here shares its metrics with another."""


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start argv in its own session with stdout and stderr appended to log, in env (default: this process's)
    less PROCESS_LOCAL."""
    env = {name: value for name, value in (os.environ if env is None else env).items() if name not in PROCESS_LOCAL}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    return True


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group pgid."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def terminate(pid: int, timeout: float = 10.0) -> None:
    """Stop pid and everything in its process group: SIGTERM, then SIGKILL after timeout.

    Returns once no live member of the group is left (a child such as tritonserver may
    take longer to exit than the wrapper that started it), reaping pid if it is our child.
    """

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return not alive(pid) and not group_alive(pid)

    if gone():
        return
    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return
        time.sleep(0.05)
    signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.02)


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


_LOOPBACK_TLS = ssl.create_default_context()
_LOOPBACK_TLS.check_hostname = False
_LOOPBACK_TLS.verify_mode = ssl.CERT_NONE  # loopback servers with self-signed certificates


def unanswered(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> str:
    """Why url does not answer 200 within timeout seconds; empty when it does."""
    try:
        req = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(req, context=_LOOPBACK_TLS, timeout=timeout) as resp:
            return "" if resp.status == 200 else f"HTTP {resp.status}"
    except OSError as err:  # refused, timed out, an HTTP error status
        return str(err)


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll url until it answers 200; fail early with the log's tail if proc exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            name = Path(str(proc.args[0])).name  # type: ignore[index]
            raise RuntimeError(
                f"{name} exited with code {proc.returncode} while starting:\n{log_tail(log) if log else ''}"
            )
        if not (last := unanswered(url, 2, headers)):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def ancestors() -> set[int]:
    """This process and every process above it."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def argv(pid: int) -> list[str]:
    """The command line of process pid (empty for a kernel thread); raises OSError when there is none."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def find(matches: Callable[[list[str]], bool]) -> list[int]:
    """Live processes of this user, other than this one and its ancestors, whose argv matches."""
    skip, uid, found = ancestors(), os.getuid(), []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(proc.name)
            if pid in skip or proc.stat().st_uid != uid:
                continue
            if (command := argv(pid)) and matches(command) and alive(pid):
                found.append(pid)
    return found

"""The local runtime's supervisor: a part that stops is started again, as a kubelet restarts a cluster's own parts.

``kubeforge up`` starts it last; it checks every part each ``INTERVAL`` seconds and, when one has stopped (kill -9,
a crash, an out-of-memory kill), runs ``runtime.start_stopped`` in a process of its own (see ``run``): what ``up``
would do, under the same lock, so the parts that read a restarted part's address start again with it and a new
runner adopts the workloads. A part that keeps stopping is started with a growing delay (``BACKOFF``), as a
kubelet's CrashLoopBackOff, so a broken part does not take the machine; the delay is forgotten once every part has
run for ``QUIET`` seconds.

A part can hang without exiting (a deadlock, SIGSTOP): it runs and its port takes connections, so the supervisor also
asks each running part's health URL, as a kubelet's liveness probe does (``Probes``); one that fails
``PROBE_FAILURES`` times in a row is stopped, and so started again.

What it did goes to ``<data dir>/supervisor.json`` (the last ``KEPT`` steps: parts stopped, restarts), which
``kubeforge status`` shows: when a part does not come back, the status says which and why. ``down`` stops the
supervisor before anything else; a supervisor whose pid is no longer the one in ``local.json`` (a ``down`` ran) exits
by itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.files import replace_whole

if TYPE_CHECKING:
    from .runtime import Part

RECORD_FILE = "supervisor.json"
INTERVAL = 2.0
BACKOFF = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)
QUIET = 300.0
KEPT = 20
STARTING, STARTED, HUNG = "starting", "started", "did not answer"
PROBE_EVERY = 5.0
PROBE_TIMEOUT = 5.0
PROBE_FAILURES = 3
"""A running part's health URL is asked every PROBE_EVERY seconds; one that fails PROBE_FAILURES times in a row
(no answer within PROBE_TIMEOUT, an error status) is hung: it is stopped, and so started again. A kubelet's
liveness probe, with periodSeconds 5, timeoutSeconds 5 and failureThreshold 3."""


def delay(restarts_in_a_row: int) -> float:
    """Seconds to wait before the next restart, after restarts_in_a_row restarts without QUIET seconds between."""
    return BACKOFF[min(restarts_in_a_row, len(BACKOFF) - 1)]


def record(data_dir: Path, parts: list[str], outcome: str) -> None:
    """Keep a step of a restart (STARTING, STARTED or the error), the newest last."""
    path = data_dir / RECORD_FILE
    kept = _restarts(data_dir)[-(KEPT - 1) :]
    kept.append({"at": time.time(), "parts": parts, "outcome": outcome})
    replace_whole(path, json.dumps(kept, indent=2))


def restarted_since(data_dir: Path, since: float) -> list[str]:
    """The parts started again since the time.time() `since`, in the order they were."""
    restarts = (r for r in _restarts(data_dir) if r["at"] >= since and r["outcome"] == STARTED)
    return list(dict.fromkeys(name for r in restarts for name in r["parts"]))


def last(data_dir: Path) -> str:
    """The last restart in words, for `kubeforge status`; empty when there was none."""
    restarts = _restarts(data_dir)
    if not restarts:
        return ""
    r = restarts[-1]
    at = datetime.fromtimestamp(r["at"]).strftime("%Y-%m-%d %H:%M:%S")
    parts = ", ".join(r["parts"])
    if r["outcome"] == STARTING:
        return f"starting {parts} since {at}"
    if r["outcome"] == STARTED:
        return f"started {parts} again at {at}" + _why_stopped(restarts[:-1])
    if r["outcome"].startswith(HUNG):
        return f"stopped {parts} at {at}: it {r['outcome']}"
    return f"could not start {parts} at {at} (tries again): {r['outcome'].splitlines()[0]}"


def _why_stopped(before: list[dict]) -> str:
    """Why the supervisor stopped parts itself, when it did before this restart: its steps before the restart's
    STARTING say which did not answer."""
    if before and before[-1]["outcome"] == STARTING:
        before = before[:-1]
    hung: list[str] = []
    while before and before[-1]["outcome"].startswith(HUNG):
        hung.insert(0, f"{', '.join(before[-1]['parts'])} {before[-1]['outcome']}")
        before = before[:-1]
    return f" ({'; '.join(hung)})" if hung else ""


def _restarts(data_dir: Path) -> list[dict]:
    path = data_dir / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet
        return []


def run(data_dir: Path) -> None:
    """Check the parts every INTERVAL seconds until a `down`; start the stopped ones in a process of its own each time
    (restart), so what a start imports and allocates (the API models, the Kubernetes client) goes with that process
    and the supervisor stays small."""
    from . import runtime  # runtime imports this module for status

    root = data_dir.resolve()
    in_a_row, since_restart = 0, time.monotonic()
    probes = Probes(root)
    while True:
        time.sleep(INTERVAL)  # first: `up` records this process's pid just after starting it
        state = runtime.LocalState.read(root)
        if state.supervisor_pid != os.getpid():
            return
        parts = runtime.parts(root, state)
        stopped = [part.name for part in parts if not part.running]
        if not stopped:
            probes.check(parts)  # a hung part it stops is found stopped at the next check
            if time.monotonic() - since_restart > QUIET:
                in_a_row = 0
            continue
        if wait := delay(in_a_row):
            _say(f"{', '.join(stopped)} stopped; starting again in {wait:.0f} s ({in_a_row} restarts in a row)")
            time.sleep(wait)
        subprocess.run([sys.executable, "-m", __spec__.name, "--data-dir", str(root), "--restart"], check=False)
        in_a_row, since_restart = in_a_row + 1, time.monotonic()


class Probes:
    """The health checks of the running parts (see PROBE_EVERY), and how many times in a row each has failed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed: dict[tuple[str, object], int] = {}  # by part and its pids: a part started again starts at 0
        self.due = time.monotonic() + PROBE_EVERY

    def check(self, parts: list[Part]) -> None:
        """Ask each running part's health URL when due; stop each that has failed PROBE_FAILURES times in a row."""
        from . import runtime
        from .processes import unanswered

        if time.monotonic() < self.due:
            return
        asked = [part for part in parts if part.running and part.health]
        with ThreadPoolExecutor(len(asked) or 1) as pool:  # at once: a hung part's timeout delays none of the others
            answers = list(pool.map(lambda part: unanswered(part.health, PROBE_TIMEOUT), asked))
        failed = {}
        for part, why in zip(asked, answers, strict=True):
            if not why:
                continue
            key = (part.name, part.pids)
            if (times := self.failed.get(key, 0) + 1) < PROBE_FAILURES:
                failed[key] = times
                continue
            said = f"{HUNG} {part.health} {times} times in a row: {why}"
            _say(f"{part.name} {said}; stopping it")
            if runtime.stop_hung(self.root, part):
                record(self.root, [part.name], said)
        self.failed = failed
        self.due = time.monotonic() + PROBE_EVERY


def restart(data_dir: Path) -> None:
    """Start the parts stopped now, as `up` does, and record how it went."""
    from . import runtime

    stopped: list[str] = []

    def starting(parts: list[str]) -> None:
        stopped.extend(parts)
        _say(f"starting {', '.join(parts)}")
        record(data_dir, parts, STARTING)

    try:
        started = runtime.start_stopped(data_dir, starting)
    except runtime.UpFailed as err:
        _say(f"failed: {err}")
        record(data_dir, stopped, str(err))
    else:
        if started:  # none when an `up` started them first
            _say(f"started {', '.join(started)} again")
            record(data_dir, started, STARTED)


def _say(text: str) -> None:
    logging.getLogger("kubeforge.supervisor").info(text)


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--restart", "once", is_flag=True, help="Start the parts stopped now, once, and exit.")
def main(data_dir: Path, once: bool) -> None:
    """Start again each part of the local runtime in data_dir that stops, until `kubeforge down`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    (restart if once else run)(data_dir.resolve())


if __name__ == "__main__":
    main()

"""The README's two commands work alone on a fresh machine: each installs everything it needs first.

`make -n` prints what a target would run on a machine with nothing installed (a virtualenv
path that does not exist), without running it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO

PREREQUISITES = (
    "install-system-deps.sh",  # etcd, openssl, the Go toolchain (apt), first
    "pip install -q -e '.[dev]'",  # the virtualenv
    "install-triton.sh",  # Triton's own virtualenv
    "kubeforge.local.binaries",  # kube-apiserver, built once
)


@pytest.mark.parametrize(("target", "final"), [("demo", "kubeforge demo"), ("test", "python -m pytest tests")])
def test_readme_command_installs_everything_first(target, final, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    plan = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()

    def position(fragment: str) -> int:
        found = [i for i, line in enumerate(lines) if fragment in line]
        assert found, f"`make {target}` on a fresh machine does not run {fragment!r}:\n{plan.stdout}"
        return found[0]

    apt, *parallel = [position(step) for step in PREREQUISITES]  # the rest may run side by side
    assert apt < min(parallel) and max(parallel) < position(final), f"`make {target}` order:\n{plan.stdout}"

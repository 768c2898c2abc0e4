"""What a process the local runtime starts inherits from the process that starts it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kubeforge.local.processes import spawn

PROGRAM = "import prometheus_client.values as v; print(v.ValueClass.__name__)"


@pytest.mark.parametrize("explicit", [False, True])
def test_a_prometheus_multiprocess_directory_set_by_an_import_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: bool
) -> None:
    """Feast sets it on import; a gateway or operator started afterwards keeps its metrics in its own memory."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("KUBEFORGE_PROBE", "kept")
    log = tmp_path / "child.log"
    program = PROGRAM + "; import os; print(os.environ.get('KUBEFORGE_PROBE'))"
    spawn([sys.executable, "-c", program], log, dict(os.environ) if explicit else None).wait(timeout=60)
    assert log.read_text().split() == ["MutexValue", "kept"]

"""What the operator process loads: its memory target (150 MB at 500 ModelDeployments) leaves no room for
libraries it never calls (docs/benchmarks.md, Operator)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
import kubeforge.cli
sys.modules.setdefault("kubernetes", None)  # what `kubeforge operator run` does before importing the operators
from kubeforge.operators import run
run.load()
loaded = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print(sorted(loaded & {"kubernetes", "httpx", "rich", "numpy", "pandas", "mlflow", "feast", "torch"}))
"""


def test_operators_load_no_http_client_library_nor_data_libraries() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"

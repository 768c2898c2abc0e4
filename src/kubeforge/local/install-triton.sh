#!/usr/bin/env bash
# Create the virtualenv that runs tritonserver locally: its own environment because the
# python backend stub needs numpy<2 while the rest of kubeforge needs numpy>=2 (as in a
# cluster, where Triton runs in its own container). Idempotent: a complete venv is kept.
#
# usage: install-triton.sh [VENV_DIR]   (default: .venv-triton in the current directory)
set -euo pipefail
VENV=${1:-.venv-triton}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
# onnxruntime runs the ONNX versions (scikit-learn models) in the python backend.
PINS=("torch==2.13.0" "nvidia-pytriton==0.7.0" "onnxruntime==1.31.1" "numpy<2")

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, pathlib, sys
assert md.version("nvidia-pytriton") == "0.7.0"
assert md.version("torch").split("+")[0] == "2.13.0"
assert md.version("onnxruntime") == "1.31.1"
assert int(md.version("numpy").split(".")[0]) < 2
import pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
assert (root / "bin" / "tritonserver").exists(), root
PY
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "triton venv ready: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch is pinned so pip takes the CPU build the machine provides instead of a CUDA one.
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
check || { echo "triton venv at $VENV is incomplete after install" >&2; exit 1; }
echo "triton venv ready: $VENV"

#!/usr/bin/env bash
# Fetch Triton's perf_analyzer for `make bench-perf-analyzer`. It is not on PyPI on its own: it ships in
# tritonclient's manylinux wheels up to 2.45.0 (data/bin/), linked against libb64 (Debian: libb64-0d) and the
# CUDA runtime, which it loads for CPU-only work too (nvidia-cuda-runtime-cu12 from PyPI). Idempotent.
#
# usage: install-perf-analyzer.sh DIR   then run DIR/perf_analyzer (a wrapper that sets the library path)
set -euo pipefail
DIR=${1:?usage: install-perf-analyzer.sh DIR}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ -x "$DIR/perf_analyzer" ] && "$DIR/perf_analyzer" --version >/dev/null 2>&1; then
  exit 0
fi
if ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d'; then
  echo "perf_analyzer needs libb64: sudo apt-get install libb64-0d" >&2
  exit 1
fi
mkdir -p "$DIR/wheels" "$DIR/unpacked"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR/wheels" tritonclient==2.45.0 nvidia-cuda-runtime-cu12==12.9.79
for wheel in "$DIR"/wheels/*.whl; do
  "$PY" -m zipfile -e "$wheel" "$DIR/unpacked"
done
BINARY="$DIR/unpacked/tritonclient-2.45.0.data/data/bin/perf_analyzer"
chmod +x "$BINARY"
cat > "$DIR/perf_analyzer" <<WRAPPER
#!/usr/bin/env bash
LD_LIBRARY_PATH="$(cd "$DIR/unpacked/nvidia/cuda_runtime/lib" && pwd)\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$(cd "$(dirname "$BINARY")" && pwd)/perf_analyzer" "\$@"
WRAPPER
chmod +x "$DIR/perf_analyzer"
"$DIR/perf_analyzer" --version >/dev/null
echo "perf_analyzer in $DIR/perf_analyzer"

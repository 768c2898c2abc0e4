"""A real tritonserver on 127.0.0.1, from the ``nvidia-pytriton`` wheel in its own virtualenv.

The wheel carries Triton with the python backend only, so locally every model runs in
the python-backend flavour of the exported repository. Triton needs numpy<2 (its python
backend stub rejects numpy 2 output shapes) while kubeforge needs numpy>=2, hence the
separate environment, as Triton has its own container in a cluster. The server runs in
EXPLICIT model-control mode: models load and unload through its repository API, as the
serving pod's control loop does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubeforge.serving import tritonapi

from .processes import free_port, spawn, terminate, wait_http

INSTALL_SCRIPT = Path(__file__).with_name("install-triton.sh")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def default_venv() -> Path:
    """``.venv-triton`` beside the running kubeforge virtualenv (the repository root in a checkout)."""
    return Path(os.environ.get("KUBEFORGE_TRITON_VENV") or Path(sys.prefix).parent / ".venv-triton")


def install(venv: Path | None = None) -> Path:
    """Create (or keep, when complete) the Triton virtualenv; returns its path."""
    venv = venv or default_venv()
    subprocess.run(["bash", str(INSTALL_SCRIPT), str(venv)], check=True)
    return venv


@dataclass(frozen=True)
class Layout:
    """Where the pieces of the wheel's Triton live, and the environment its python backend needs."""

    venv: Path
    server: Path
    backends: Path
    stub: Path
    libdirs: tuple[Path, ...]

    @classmethod
    def find(cls, venv: Path) -> Layout:
        python = venv / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"no Triton virtualenv at {venv}: run {INSTALL_SCRIPT} {venv}")
        probe = (
            "import json, sysconfig, pytriton, pathlib, sys;"
            "p = pathlib.Path(pytriton.__file__).parent;"
            "print(json.dumps([str(p), sysconfig.get_config_var('LIBDIR'),"
            " f'{sys.version_info[0]}.{sys.version_info[1]}']))"
        )
        out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout
        pkg, libdir, pyver = json.loads(out)
        root = Path(pkg) / "tritonserver"
        return cls(
            venv=venv,
            server=root / "bin" / "tritonserver",
            backends=root / "backends",
            stub=root / "python_backend_stubs" / pyver / "triton_python_backend_stub",
            # The stub must load the libpython of the venv's interpreter, not the system's.
            libdirs=(Path(libdir), Path(pkg).parent / "nvidia_pytriton.libs"),
        )

    def backend_directory(self, into: Path) -> Path:
        """A backend directory with the python backend and the stub for this Python beside it."""
        python_dir = into / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src in [*(self.backends / "python").iterdir(), self.stub]:
            link = python_dir / src.name
            if not link.exists():
                link.symlink_to(src)
        return into

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """base (this process's environment by default) with what tritonserver and its python stub need."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*(str(d) for d in self.libdirs), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        )
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])  # the stub runs python3
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env


@dataclass
class TritonServer:
    """A running tritonserver; ``url`` is its HTTP endpoint."""

    workdir: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    pid: int
    shm_prefix: str
    log: Path
    models: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def load(self, name: str, timeout: float = 120.0) -> None:
        tritonapi.load_model(self.url, name, timeout=timeout)

    def unload(self, name: str) -> None:
        tritonapi.unload_model(self.url, name)

    def stop(self) -> None:
        terminate(self.pid, timeout=20)
        clean_shm(self.shm_prefix)


def clean_shm(prefix: str) -> None:
    """Remove shared-memory regions a python backend stub left behind (after a crash or SIGKILL)."""
    for region in SHM_DIR.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            region.unlink()


def start(
    model_repository: Path,
    workdir: Path,
    models: list[str] | tuple[str, ...] = (),
    venv: Path | None = None,
    http_port: int | None = None,
    timeout: float = 180.0,
) -> TritonServer:
    """Start tritonserver on loopback over model_repository, load models, wait until they are ready."""
    layout = Layout.find(venv or default_venv())
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    grpc_port, metrics_port = free_port(), free_port()
    # A prefix of our own, so cleaning up after this server never touches another one's regions.
    shm_prefix = f"{SHM_PREFIX}kf{http_port}_"
    clean_shm(shm_prefix)
    log = workdir / f"tritonserver-{http_port}.log"
    argv = [
        str(layout.server),
        f"--model-repository={model_repository}",
        f"--backend-directory={layout.backend_directory(workdir / 'backends')}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
    ]  # fmt: skip
    proc = spawn(argv, log, layout.env())
    server = TritonServer(workdir, http_port, grpc_port, metrics_port, proc.pid, shm_prefix, log, list(models))
    try:
        wait_http(f"{server.url}/v2/health/live", proc, log, timeout)
        for name in models:
            server.load(name, timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server

"""What a container's command[0] becomes on this machine, where images do not exist.

The operators only run kubeforge's own programs: ``kubeforge`` and ``torchrun`` are the
executables installed beside this Python (the installed kubeforge stands in for the
image), and ``tritonserver`` is the one from the Triton virtualenv, with the
environment and backend directory its python backend needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .. import triton

NODE_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
NODE_ENV_PREFIXES = ("LC_", "XDG_", "PYTHON", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "SSL_CERT_")
"""What of the runner's environment a container starts with, before its own env: what a node would give it (a
PATH and HOME, the locale, the thread and GPU settings a device plugin or the image would set)."""


def node_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a local container starts with. Not the rest of the shell that ran ``kubeforge up`` (its
    MLFLOW_* settings, KUBECONFIG, cloud credentials): a pod in a cluster sees only its own env, and a trainer that
    only works because of a variable in someone's shell would fail there."""
    return {k: v for k, v in environ.items() if k in NODE_ENV or k.startswith(NODE_ENV_PREFIXES)}


class NotRunnable(Exception):
    """The container's command has no local counterpart."""


class Executables:
    """Resolves commands; finds the Triton layout once, on first use.

    listen_address is what the servers in local pods bind to (127.0.0.1 unless the user asks
    otherwise): on a node it would be the pod's own network, here it is the machine's.
    """

    LOCAL = ("kubeforge", "torchrun")

    def __init__(self, listen_address: str = "127.0.0.1") -> None:
        self._triton: triton.Layout | None = None
        self.listen_address = listen_address

    def resolve(self, words: list[str], pod_dir: Path) -> tuple[list[str], dict[str, str]]:
        """(argv, base environment) for command + args words of a container."""
        if not words:
            raise NotRunnable("the container has no command: image entrypoints cannot run locally")
        head, rest = words[0], words[1:]
        if head in self.LOCAL:
            return [str(Path(sys.executable).parent / head), *rest], node_env()
        if head == "tritonserver":
            if self._triton is None:
                self._triton = triton.Layout.find(triton.default_venv())
            if not any(arg.startswith("--backend-directory") for arg in rest):
                rest = [*rest, f"--backend-directory={self._triton.backend_directory(pod_dir / 'backends')}"]
            return [str(self._triton.server), *rest], self._triton.env(node_env())
        raise NotRunnable(f"command {head!r} cannot run locally (only {', '.join([*self.LOCAL, 'tritonserver'])})")

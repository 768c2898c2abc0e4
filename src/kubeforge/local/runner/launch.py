"""Turn one container of a pod template into a local command line and environment, as a kubelet would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...operators.labels import LISTEN_ADDRESS_ENV
from .executables import Executables
from .expand import PathRewriter, expand, port_env_name
from .snapshot import Snapshot
from .state import PodState
from .volumes import MissingSource, volume_dir

LOOPBACK = "127.0.0.1"


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    probe: str | None


def termination_log(pod: PodState, container: str) -> Path:
    return Path(pod.dir) / f"{container}.termination-log"


def _value_from(source: dict[str, Any], pod: PodState, snapshot: Snapshot) -> str:
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        fields = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "status.podIP": LOOPBACK}
        if path not in fields:
            raise MissingSource(f"fieldRef {path} is not available locally")
        return fields[path]
    for kind, ref_key in (("configMap", "configMapKeyRef"), ("secret", "secretKeyRef")):
        if ref := source.get(ref_key):
            data = snapshot.source(kind, pod.namespace, ref["name"])
            if data is not None and ref["key"] in data:
                return data[ref["key"]].decode()
            if ref.get("optional"):
                return ""
            raise MissingSource(f"{kind} {ref['name']!r} key {ref['key']!r} not found")
    raise MissingSource(f"env source {sorted(source)} is not supported locally")


def _probe(container: dict[str, Any], ports: list[dict[str, Any]]) -> str | None:
    get = (container.get("readinessProbe") or {}).get("httpGet")
    if not get:
        return None
    port = get["port"]
    local = next((p["local"] for p in ports if port in (p["name"], p["containerPort"])), port)
    return f"http://{LOOPBACK}:{local}{get.get('path', '/')}"


def build(pod: PodState, container: dict[str, Any], snapshot: Snapshot, executables: Executables) -> Launch:
    """The local argv and env of container; raises MissingSource or NotRunnable."""
    mounts = {
        m["mountPath"]: str(volume_dir(Path(pod.dir), m["name"]) / m.get("subPath", ""))
        for m in container.get("volumeMounts", [])
    }
    env: dict[str, str] = {}
    if path := container.get("terminationMessagePath"):
        mounts[path] = env["KUBEFORGE_TERMINATION_LOG"] = str(termination_log(pod, container["name"]))
    rewrite = PathRewriter({k: v.rstrip("/") for k, v in mounts.items()})
    ports = [p for p in pod.ports if p["container"] == container["name"]]
    overrides = {port_env_name(str(p["name"])): str(p["local"]) for p in ports if p["name"]}
    overrides[LISTEN_ADDRESS_ENV] = executables.listen_address
    if pod.indexed:
        env["JOB_COMPLETION_INDEX"] = str(pod.index)
    for entry in container.get("env", []):
        name = entry["name"]
        if name in env:
            continue  # set by the runner (termination log, completion index)
        if "valueFrom" in entry:
            env[name] = _value_from(entry["valueFrom"], pod, snapshot)
        else:
            env[name] = overrides.get(name) or expand(rewrite(entry.get("value", "")), env)
    env.update(overrides)
    words = [expand(rewrite(w), env) for w in [*container.get("command", []), *container.get("args", [])]]
    argv, base = executables.resolve(words, Path(pod.dir))
    return Launch(argv, {**base, **env}, _probe(container, ports))

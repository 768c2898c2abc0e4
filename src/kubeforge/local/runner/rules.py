"""PrometheusRules into the local Prometheus, as the Prometheus Operator loads them in a cluster.

The local platform serves the PrometheusRule kind, so the ModelDeployment operator gives each
deployment a rule of its own with its targets (as where the Prometheus Operator runs). This
module writes the rules of every PrometheusRule to one rule file each, in a folder the local
Prometheus loads, and asks Prometheus to reload when any changed. A rule promtool rejects is
not written (one bad rule would stop Prometheus from reloading every other): its object gets
a Warning Event with promtool's words instead, as the Prometheus Operator's admission webhook
would have refused it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, cast

import httpx
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ...core import kube

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "monitoring.coreos.com", "v1", "prometheusrules"
COMPONENT = "kubeforge-local-runner"


def file_name(namespace: str, name: str) -> str:
    """One file per object; "_" appears in neither a namespace nor a name, so no two objects share one."""
    return f"{namespace}_{name}.yaml"


def check(text: str) -> str | None:
    """promtool's complaint about a rule file, or None when it is valid (or promtool is not installed)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        done = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).replace(f.name, "spec.groups").splitlines()
    return " ".join(line.strip() for line in lines if line.strip() and line.strip() != "FAILED:")


class RuleSync:
    """Keeps folder holding exactly the valid rules of the PrometheusRules in the namespaces watched."""

    def __init__(self, folder: Path, address_file: Path):
        self.folder = folder
        self.address_file = address_file  # host:port of the running Prometheus, written when it starts
        self.refused: dict[str, str] = {}  # file name -> the text promtool refused, so it is checked once

    def sync(self, api: client.ApiClient, namespaces: set[str] | None) -> None:
        try:
            # The client types the answer as object; a list answer is the JSON {"items": [...]}.
            answer = cast(
                dict[str, Any], client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
            )
            listed: list[dict[str, Any]] = answer["items"]
        except ApiException as err:
            if err.status != 404:
                raise
            listed = []  # the kind is not served (or no longer): no rules to load
        wanted: dict[str, tuple[dict[str, Any], str]] = {}
        for obj in listed:
            meta = obj["metadata"]
            if namespaces is None or meta["namespace"] in namespaces:
                text = yaml.safe_dump({"groups": (obj.get("spec") or {}).get("groups") or []}, sort_keys=False)
                wanted[file_name(meta["namespace"], meta["name"])] = (obj, text)
        self.folder.mkdir(parents=True, exist_ok=True)
        changed = False
        for path in self.folder.glob("*.yaml"):
            if path.name not in wanted:
                path.unlink()
                changed = True
        for name, (obj, text) in wanted.items():
            path = self.folder / name
            if (path.exists() and path.read_text() == text) or self.refused.get(name) == text:
                continue
            if problem := check(text):
                self.refused[name] = text
                log.warning("%s refused: %s", name, problem)
                kube.event(api, obj, "Warning", "InvalidRule", f"not loaded into Prometheus: {problem}", COMPONENT)
                changed |= path.exists()
                path.unlink(missing_ok=True)
                continue
            self.refused.pop(name, None)
            path.write_text(text)
            changed = True
        if changed:
            self.reload()

    def reload(self) -> None:
        """Ask Prometheus to load the rule files again; one that is not running loads them when it starts."""
        if not self.address_file.exists():
            return
        url = f"http://{self.address_file.read_text().strip()}/-/reload"
        try:
            httpx.post(url, timeout=30).raise_for_status()
        except httpx.HTTPError as err:
            log.warning("Prometheus did not reload its rules (%s): %s", url, err)

"""The operators' API connection (kubeforge.core.kubeapi) against a real API server: credentials as
kubeconfigs write them, a rotated token picked up without a restart, and refusals as ApiError."""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kubeforge.core import kube, kubeapi
from kubeforge.core.kubeapi import ApiError, KubeApi

pytestmark = pytest.mark.integration


def _config(controlplane) -> dict[str, Any]:
    return json.loads(Path(controlplane.kubeconfig).read_text())


def test_a_token_file_is_read_again_when_it_is_rotated(controlplane, tmp_path: Path) -> None:
    config = _config(controlplane)
    token = config["users"][0]["user"].pop("token")
    config["users"][0]["user"]["tokenFile"] = "token"  # relative to the kubeconfig, as kubectl reads it
    (tmp_path / "token").write_text("not-the-token\n")
    (tmp_path / "config").write_text(json.dumps(config))
    api = KubeApi.from_kubeconfig(tmp_path / "config")

    with pytest.raises(ApiError) as refused:
        kube.capabilities(api)
    assert refused.value.status == 401

    (tmp_path / "token").write_text(token + "\n")
    os.utime(tmp_path / "token", (1, 1))  # a different mtime, however fast the test runs
    assert kube.capabilities(api).major == 1


def test_paths_come_from_discovery_and_errors_name_the_status(controlplane, namespace: str) -> None:
    api = kube.connect(controlplane.kubeconfig)
    deployment = api.path("apps/v1", "Deployment", "web", namespace)
    assert deployment == f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    assert api.path("discovery.k8s.io", "EndpointSlice", None, namespace).endswith(f"/{namespace}/endpointslices")
    assert api.path("v1", "Namespace", namespace, None) == f"/api/v1/namespaces/{namespace}"
    assert kube.get(api, "v1", "ConfigMap", "absent", namespace) is None
    assert kube.serves(api, "apps/v1", "Deployment") and not kube.serves(api, "example.com/v1", "Widget")

    with pytest.raises(ApiError) as invalid:
        kube.create(api, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}})
    assert invalid.value.status == 422 and "Bad_Name" in invalid.value.body


def test_a_kept_alive_connection_the_server_closed_is_opened_again(controlplane, namespace: str) -> None:
    api = kube.connect(controlplane.kubeconfig)
    assert kube.get(api, "v1", "Namespace", namespace, None) is not None
    api._local.conn.sock.shutdown(socket.SHUT_RDWR)  # what an idle timeout or a restarted API server leaves
    assert kube.get(api, "v1", "Namespace", namespace, None) is not None


def test_in_a_pod_the_service_account_is_used(controlplane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pod has: the API server's address in the environment, a token and the CA in the mounted secret
    (here a directory standing in for /var/run/secrets/kubernetes.io/serviceaccount)."""
    config = _config(controlplane)
    (tmp_path / "token").write_text(config["users"][0]["user"]["token"])
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
    monkeypatch.setattr(kubeapi, "SERVICE_ACCOUNT", tmp_path)
    server = config["clusters"][0]["cluster"]["server"]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.split("//")[1].rsplit(":", 1)[0])
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", server.rsplit(":", 1)[1])

    assert kube.capabilities(KubeApi.in_cluster()).major == 1

"""One tick's view of the ConfigMaps and Secrets that local pods read, listed once per namespace."""

from __future__ import annotations

import base64

from kubernetes import client

from . import stored


class Snapshot:
    """ConfigMap and Secret data by namespace and name, as bytes, fetched on first use."""

    def __init__(self, api: client.ApiClient):
        self._core = client.CoreV1Api(api)
        self._configmaps: dict[str, dict[str, dict[str, bytes]]] = {}
        self._secrets: dict[str, dict[str, dict[str, bytes]]] = {}

    def configmap(self, namespace: str, name: str) -> dict[str, bytes] | None:
        if namespace not in self._configmaps:
            items = self._core.list_namespaced_config_map(namespace).items
            self._configmaps[namespace] = {
                stored.name(cm): {
                    **{k: v.encode() for k, v in (cm.data or {}).items()},
                    **{k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()},
                }
                for cm in items
            }
        return self._configmaps[namespace].get(name)

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        if namespace not in self._secrets:
            items = self._core.list_namespaced_secret(namespace).items
            self._secrets[namespace] = {
                stored.name(s): {k: base64.b64decode(v) for k, v in (s.data or {}).items()} for s in items
            }
        return self._secrets[namespace].get(name)

    def source(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        """kind is "configMap" or "secret", as in volume and env sources."""
        return self.configmap(namespace, name) if kind == "configMap" else self.secret(namespace, name)

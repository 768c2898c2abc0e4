"""A small client for the MLflow model registry REST API.

Operators only resolve aliases and read model versions (the approval commands also set
version tags); the full ``mlflow`` package
costs seconds of import time (and pulls in feast's request-header plugin on first
use), which would slow every operator start. This speaks the documented REST API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import plainhttp


class MLflowError(RuntimeError):
    """MLflow answered with an error or could not be reached."""


class NotFound(MLflowError):
    """The registered model, version or alias does not exist."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            name=data["name"],
            version=str(data["version"]),
            run_id=data.get("run_id", ""),
            source=data.get("source", ""),
            tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
            aliases=tuple(data.get("aliases", [])),
        )


class MLflowRegistry:
    """Read access to registered model versions over HTTP."""

    def __init__(self, tracking_uri: str, timeout: float = 10.0):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._fetch(f"/api/2.0/mlflow/{path}", params).json()

    def _fetch(self, path: str, params: dict[str, Any], body: dict[str, Any] | None = None) -> plainhttp.Response:
        """GET path with params, or POST body as JSON."""
        url = self.tracking_uri + path
        try:
            resp = plainhttp.get(url, params, self.timeout) if body is None else plainhttp.post(url, body, self.timeout)
        except plainhttp.HttpError as err:
            raise MLflowError(f"MLflow at {self.tracking_uri} is unreachable: {err}") from err
        if resp.status in (400, 404):
            try:
                body = resp.json()
            except ValueError:
                body = {}
            message = str(body.get("message", resp.text))
            # A missing version is RESOURCE_DOES_NOT_EXIST; a missing alias is a 400 that says "not found".
            if body.get("error_code") == "RESOURCE_DOES_NOT_EXIST" or "not found" in message.lower():
                raise NotFound(message)
        if resp.status >= 400:
            raise MLflowError(f"MLflow {path} failed ({resp.status}): {resp.text[:500]}")
        return resp

    def by_alias(self, name: str, alias: str) -> ModelVersion:
        data = self._get("registered-models/alias", {"name": name, "alias": alias})
        return ModelVersion.from_json(data["model_version"])

    def by_version(self, name: str, version: int | str) -> ModelVersion:
        data = self._get("model-versions/get", {"name": name, "version": str(version)})
        return ModelVersion.from_json(data["model_version"])

    def set_version_tag(self, name: str, version: int | str, key: str, value: str) -> None:
        """Set a tag of a registered model version; NotFound when the version does not exist."""
        body = {"name": name, "version": str(version), "key": key, "value": value}
        self._fetch("/api/2.0/mlflow/model-versions/set-tag", {}, body)

    def registered_models(self, limit: int = 100) -> list[str]:
        """Names of registered models, at most limit of them, in MLflow's order (by name)."""
        data = self._get("registered-models/search", {"max_results": limit})
        return [m["name"] for m in data.get("registered_models", [])]

    def artifact(self, run_id: str, path: str) -> bytes:
        """A file the run logged (path relative to its artifact root); raises NotFound when it has none."""
        return self._fetch("/get-artifact", {"run_id": run_id, "path": path}).content

    def model_file(self, version: ModelVersion) -> bytes | None:
        """The MLmodel file (flavours, signature) of a registered version, when the tracking server serves the
        artifacts it is stored with (mlflow-artifacts, the default); None when they live elsewhere (e.g. s3://
        without the server's artifact proxy), for the caller to read them with the mlflow package instead."""
        source = version.source
        if source.startswith("models:/m-"):  # a logged model (MLflow 3): its artifacts have their own location
            found = self._get(f"logged-models/{source.removeprefix('models:/')}", {})
            source = found["model"]["info"]["artifact_uri"]
        if source.startswith("runs:/"):
            run_id, _, path = source.removeprefix("runs:/").partition("/")
            return self.artifact(run_id, f"{path}/MLmodel")
        if source.startswith("mlflow-artifacts:/"):
            path = source.removeprefix("mlflow-artifacts:").lstrip("/")
            return self._fetch(f"/api/2.0/mlflow-artifacts/artifacts/{path}/MLmodel", {}).content
        return None

    def search(self, name: str) -> list[ModelVersion]:
        """All versions of a registered model, newest first."""
        out: list[ModelVersion] = []
        token = None
        while True:
            params: dict[str, Any] = {"filter": f"name='{name}'", "max_results": 200}
            if token:
                params["page_token"] = token
            data = self._get("model-versions/search", params)
            out += [ModelVersion.from_json(v) for v in data.get("model_versions", [])]
            token = data.get("next_page_token")
            if not token:
                return sorted(out, key=lambda v: int(v.version), reverse=True)

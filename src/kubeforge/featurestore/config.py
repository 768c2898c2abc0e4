"""Where the feature store lives: the Feast registry, the online store and the offline copies.

The default needs no setup: everything under one directory (a PVC in a cluster, the data
directory in the local runtime) — a file registry, a sqlite online store, and parquet
copies of CSV sources (Feast's file offline store reads parquet). For production, the
registry can be a SQL database and the online store Redis:

    KUBEFORGE_FEAST_DIR=/var/lib/kubeforge/features
    KUBEFORGE_FEAST_REGISTRY=postgresql+psycopg://user:pass@db/feast   # or a file path
    KUBEFORGE_FEAST_ONLINE_STORE=redis://redis:6379/0                  # or "sqlite"

Each Kubernetes namespace is its own Feast project (hyphens become underscores: Feast's
sqlite store uses project names in table names, and namespaces never contain an
underscore, so no two namespaces share a project), so a FeatureView's Feast name is its
Kubernetes name and two namespaces never collide. Nothing here imports feast: reading the
settings must stay cheap for processes that never touch features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DIR_ENV = "KUBEFORGE_FEAST_DIR"
REGISTRY_ENV = "KUBEFORGE_FEAST_REGISTRY"
ONLINE_ENV = "KUBEFORGE_FEAST_ONLINE_STORE"
ENV = (DIR_ENV, REGISTRY_ENV, ONLINE_ENV)


@dataclass(frozen=True)
class StoreSettings:
    """The feature store's locations; `env()` passes them on to Jobs and pods."""

    root: Path
    """Directory of the embedded store: registry file, sqlite online store, parquet copies of CSV sources."""
    registry: str = ""
    """File path or SQLAlchemy URL of the Feast registry; empty: <root>/registry.db."""
    online: str = "sqlite"
    """"sqlite" (a file under root) or a redis://host:port[/db] URL."""

    @classmethod
    def from_env(cls, default_root: Path | None = None) -> StoreSettings:
        root = os.environ.get(DIR_ENV) or default_root or Path("/var/lib/kubeforge/features")
        return cls(Path(root), os.environ.get(REGISTRY_ENV, ""), os.environ.get(ONLINE_ENV) or "sqlite")

    def env(self) -> dict[str, str]:
        """These settings as the environment variables from_env reads."""
        return {DIR_ENV: str(self.root), REGISTRY_ENV: self.registry, ONLINE_ENV: self.online}

    @property
    def registry_file(self) -> Path:
        """The file registry of the embedded store."""
        return self.root / "registry.db"

    @property
    def registry_location(self) -> str:
        """Where the registry is, for messages: the file, or the database URL without its credentials."""
        if not self.registry:
            return str(self.registry_file)
        url = urlsplit(self.registry)
        if "://" not in self.registry or "@" not in url.netloc:
            return self.registry
        return url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()

    @property
    def sources(self) -> Path:
        """Parquet copies of CSV sources, per namespace."""
        return self.root / "sources"

    def repo_config(self, namespace: str) -> dict[str, Any]:
        """Keyword arguments of feast.RepoConfig for the project of one Kubernetes namespace."""
        registry: dict[str, Any]
        if not self.registry or "://" not in self.registry:
            registry = {"registry_type": "file", "path": self.registry or str(self.registry_file)}
        else:
            registry = {"registry_type": "sql", "path": self.registry, "cache_ttl_seconds": 5}
        if self.online == "sqlite":
            online: dict[str, Any] = {"type": "sqlite", "path": str(self.root / "online.db")}
        else:
            url = urlsplit(self.online)
            if url.scheme != "redis" or not url.hostname:
                raise ValueError(f"{ONLINE_ENV}={self.online!r}: use 'sqlite' or redis://host:port[/db]")
            db = url.path.strip("/") or "0"
            online = {"type": "redis", "connection_string": f"{url.hostname}:{url.port or 6379},db={db}"}
        return {
            "project": namespace.replace("-", "_"),
            "provider": "local",
            "registry": registry,
            "online_store": online,
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
            "repo_path": str(self.root),
        }

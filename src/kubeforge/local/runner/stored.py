"""The metadata of objects read from the API server, typed as the server returns it.

The client's models declare metadata and its name and namespace optional, as they also
describe objects still to be written; every object the API server lists has all three
(namespace where the kind is namespaced).
"""

from __future__ import annotations

from typing import Protocol

from kubernetes import client


class Stored(Protocol):
    """A model object of the Kubernetes client (V1Pod, V1Service, ...)."""

    @property
    def metadata(self) -> client.V1ObjectMeta | None: ...


def meta(obj: Stored) -> client.V1ObjectMeta:
    """obj's metadata, which an object read from the API server always has."""
    assert obj.metadata is not None, "an object read from the API server has metadata"
    return obj.metadata


def name(obj: Stored) -> str:
    """obj's name, which an object read from the API server always has."""
    value = meta(obj).name
    assert value is not None, "an object read from the API server has a name"
    return value


def namespace(obj: Stored) -> str:
    """obj's namespace, which a namespaced object read from the API server always has."""
    value = meta(obj).namespace
    assert value is not None, "a namespaced object read from the API server has a namespace"
    return value

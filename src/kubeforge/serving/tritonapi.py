"""Triton's model-repository API: load, unload and readiness of models in EXPLICIT mode.

Triton serving kubeforge models never polls its repository; the export step writes the
files and these calls make Triton pick them up, so a half-written version is never
loaded.
"""

from __future__ import annotations

import time

import httpx


class TritonError(RuntimeError):
    """Triton refused a repository request; the message carries Triton's own reason."""


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code != 200:
        try:
            reason = resp.json().get("error", resp.text)
        except ValueError:
            reason = resp.text
        raise TritonError(f"{what}: HTTP {resp.status_code}: {reason}")


def load_model(url: str, name: str, timeout: float = 120.0) -> None:
    """Load (or reload, picking up new version directories) model name; returns once it is ready."""
    resp = httpx.post(f"{url}/v2/repository/models/{name}/load", timeout=timeout)
    _check(resp, f"loading model {name!r} on {url}")
    wait_ready(url, name, timeout=timeout)


def unload_model(url: str, name: str, timeout: float = 60.0) -> None:
    resp = httpx.post(f"{url}/v2/repository/models/{name}/unload", timeout=timeout)
    _check(resp, f"unloading model {name!r} on {url}")


def is_ready(url: str, name: str, version: str | None = None, timeout: float = 2.0) -> bool:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
    try:
        return httpx.get(url + path, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(url: str, name: str, version: str | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_ready(url, name, version):
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {name!r} version {version or 'any'} not ready on {url} after {timeout:.0f}s")
        time.sleep(0.1)

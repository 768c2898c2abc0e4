"""HTTP requests to MLflow, Prometheus and gateways through the standard library.

The operator process makes few of these (a registry lookup per model reference, a query or a
scrape per canary analysis, a readiness probe while a gateway comes up), so a connection per
request costs nothing that matters, while httpx, with the command-line libraries its package
imports, would add 4 to 7 MB to the operator's memory (docs/benchmarks.md, Operator).
urllib reads the same proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and trusts the
system's certificate authorities (or SSL_CERT_FILE). Unlike urllib's default, and like httpx's,
a redirect is an answer, not followed: a server the operator was pointed at cannot send its
requests (and their Authorization headers) somewhere else.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class _Unfollowed(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx, which _send returns as the answer


_OPENER = urllib.request.build_opener(_Unfollowed)


class HttpError(OSError):
    """The server could not be reached, or did not answer in time or in HTTP."""


@dataclass(frozen=True)
class Response:
    """A whole answer, any status: a 4xx or 5xx is the caller's to judge, as with httpx."""

    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    """Its headers, names in lower case."""

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)


def get(
    url: str, params: dict[str, Any] | None = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> Response:
    """GET url, with params as its query string."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return _send(urllib.request.Request(url + query, headers=headers or {}), timeout)


def post(url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None) -> Response:
    """POST body as JSON (none when body is None)."""
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    return _send(urllib.request.Request(url, data=data, headers=sent, method="POST"), timeout)


def _send(request: urllib.request.Request, timeout: float) -> Response:
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()})
    except urllib.error.HTTPError as err:  # a 3xx, or 400 or more: an answer, not a failure to get one
        with err:
            return Response(err.code, err.read(), {k.lower(): v for k, v in err.headers.items()})
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, timeouts, resets; a malformed URL
        reason = getattr(err, "reason", None) or err
        raise HttpError(f"{request.get_method()} {request.full_url}: {reason}") from err

"""Bearer tokens at the gateway, from the file a ModelDeployment's auth Secret mounts.

The Secret key ``tokens`` holds one token per line, optionally followed by the models it
may call (``token model1,model2``); blank lines and ``#`` comments are skipped. Tokens are
kept as SHA-256 digests, so the lookup takes the same time whichever token is tried.
"""

from __future__ import annotations

import hashlib


class Unauthorized(Exception):
    """No token, or one the gateway does not know (401)."""


class Forbidden(Exception):
    """A known token that may not call this model (403)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """Parsed token file: digest -> models allowed (None: every model)."""

    def __init__(self, text: str):
        self._tokens: dict[bytes, frozenset[str] | None] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            token, _, models = line.partition(" ")
            allowed = frozenset(m.strip() for m in models.split(",") if m.strip())
            if models.strip() and not allowed:
                raise ValueError(f"line {number}: no model names after the token")
            self._tokens[_digest(token)] = allowed or None
        if not self._tokens:
            raise ValueError("no tokens: an empty token file would lock every caller out")

    def check(self, authorization: str | None, model: str) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        allowed = self._tokens.get(_digest(token.strip()), False)
        if allowed is False:
            raise Unauthorized("unknown token")
        if allowed is not None and model not in allowed:
            raise Forbidden(f"token may not call model {model!r}")

"""Bearer tokens at the gateway, and the tenants and limits behind them, from the file a ModelDeployment's auth
Secret mounts (key ``tokens``). Two formats, told apart by the file's first entry:

One token per line (the original format), optionally followed by the models it may call (``token model1,model2``);
blank lines and ``#`` comments are skipped. Such a token has no tenant and no limits; its identity is its line,
``line-3``.

YAML, when the first entry is ``gateway:``, ``tenants:`` or ``tokens:``::

    gateway:                    # optional: requests in flight across every tenant
      maxConcurrent: 64
      batchMaxConcurrent: 48    # batch callers are turned away beyond this, the rest is kept for interactive ones
    tenants:
      acme: {requestsPerSecond: 100, burst: 200, maxConcurrent: 16}
      research: {requestsPerSecond: 5}
    tokens:
      - name: acme-web          # the identity the access log and errors name; the token itself never
        tenant: acme
        token: "..."            # or sha256: <hex digest of the token>, so the Secret need not hold it
      - name: research-nightly
        tenant: research
        priority: batch         # interactive (default) or batch
        models: [clf]           # optional: the models it may call

A file that does not parse is refused whole with an error naming the entry and field
(``tenants.research.requestsPerSecond: Input should be greater than 0``), never a token.
Tokens are kept as SHA-256 digests, so the lookup takes the same time whichever token is tried.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kubeforge.api.meta import KubeModel

NO_TENANT = "none"
"""The tenant label of callers without one (original-format tokens, gateways without tokens)."""
_STRUCTURED = re.compile(r"^(---|(gateway|tenants|tokens)\s*:)")

Priority = Literal["interactive", "batch"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class Unauthorized(Exception):
    """No token, or one the gateway does not know (401)."""


class Forbidden(Exception):
    """A known token that may not call this model (403)."""

    def __init__(self, message: str, caller: Caller):
        super().__init__(message)
        self.caller = caller


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, as the token file says: what the access log, limits and metrics use."""

    identity: str | None
    """The token's name (``line-N`` for original-format tokens); None without a token file."""
    tenant: str | None = None
    priority: Priority = "interactive"


ANONYMOUS = Caller(None)


class TenantLimits(KubeModel):
    """Limits one tenant's callers share at one gateway replica."""

    requests_per_second: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None
    """Sustained inference requests per second (a token bucket refilled at this rate); no rate limit when unset."""
    burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Requests the bucket holds, taken at once after a quiet spell; default: one second's worth (at least 1)."""
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Inference requests in flight at once; no cap when unset."""

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantLimits:
        if self.burst is not None and self.requests_per_second is None:
            raise ValueError("burst needs requestsPerSecond: set the rate the bucket refills at")
        return self

    @property
    def bucket(self) -> int:
        """Requests the token bucket holds."""
        assert self.requests_per_second is not None
        return self.burst if self.burst is not None else max(1, int(self.requests_per_second))


class GatewayLimits(KubeModel):
    """Requests in flight across every tenant, and how many of them batch callers may hold."""

    max_concurrent: Annotated[int, Field(ge=1, le=100_000)]
    """Inference requests in flight at once; interactive callers are turned away beyond it."""
    batch_max_concurrent: Annotated[int, Field(ge=0, le=100_000)] | None = None
    """Batch callers are turned away once this many requests are in flight; default three quarters of
    maxConcurrent. What is left above it is kept for interactive callers."""

    @model_validator(mode="after")
    def _batch_below_total(self) -> GatewayLimits:
        if self.batch_max_concurrent is not None and self.batch_max_concurrent > self.max_concurrent:
            raise ValueError(
                f"batchMaxConcurrent ({self.batch_max_concurrent}) is above maxConcurrent ({self.max_concurrent})"
            )
        return self

    @property
    def batch(self) -> int:
        if self.batch_max_concurrent is not None:
            return self.batch_max_concurrent
        return max(1, self.max_concurrent * 3 // 4)


class TokenEntry(KubeModel):
    """One caller's token."""

    name: Name
    """Identity of the token's holder, as the access log and metrics name it."""
    token: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """The bearer token (or sha256)."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """Hex SHA-256 digest of the bearer token (or token)."""
    tenant: TenantName | None = None
    """Tenant whose limits the token's requests count against (one of tenants); none: no tenant limits."""
    priority: Priority = "interactive"
    """batch callers are turned away first when the gateway nears gateway.maxConcurrent."""
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    """Models the token may call; every model when left out."""


class TokenFile(KubeModel):
    """The YAML token file."""

    gateway: GatewayLimits | None = None
    tenants: Annotated[dict[TenantName, TenantLimits], Field(max_length=1000)] = Field(default_factory=dict)
    tokens: Annotated[list[TokenEntry], Field(min_length=1)]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """A parsed token file: digest -> (caller, models allowed or None for every model), tenants' limits, and the
    gateway's concurrency limits."""

    def __init__(self, text: str):
        self._tokens: dict[bytes, tuple[Caller, frozenset[str] | None]] = {}
        self.tenants: dict[str, TenantLimits] = {}
        self.gateway: GatewayLimits | None = None
        first = next((s for raw in text.splitlines() if (s := raw.split("#", 1)[0].strip())), "")
        if _STRUCTURED.match(first):
            self._structured(text)
        else:
            self._lines(text)
        if not self._tokens:
            raise ValueError("no tokens: an empty token file would lock every caller out")

    def _lines(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            token, _, models = line.partition(" ")
            allowed = frozenset(m.strip() for m in models.split(",") if m.strip())
            if models.strip() and not allowed:
                raise ValueError(f"line {number}: no model names after the token")
            self._tokens[_digest(token)] = (Caller(f"line-{number}"), allowed or None)

    def _structured(self, text: str) -> None:
        try:
            raw = yaml.safe_load(text)
        except yaml.MarkedYAMLError as err:  # its str() quotes the line, which may hold a token
            mark = err.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"not valid YAML{where}: {err.problem}") from None
        except yaml.YAMLError as err:
            raise ValueError(f"not valid YAML: {type(err).__name__}") from None
        if not isinstance(raw, dict):
            raise ValueError("a YAML token file is a mapping with tokens (and optionally tenants and gateway)")
        try:
            parsed = TokenFile.model_validate(raw)
        except ValidationError as err:
            raise ValueError(_explain(err, raw)) from None
        if NO_TENANT in parsed.tenants:
            raise ValueError(f"tenants.{NO_TENANT}: the name is reserved for callers without a tenant")
        names: dict[str, int] = {}
        for index, entry in enumerate(parsed.tokens):
            where = f"tokens[{index}] ({entry.name})"
            if entry.name in names:
                raise ValueError(f"{where}.name: tokens[{names[entry.name]}] has the same name; names are unique")
            names[entry.name] = index
            if (entry.token is None) == (entry.sha256 is None):
                raise ValueError(f"{where}: give exactly one of token and sha256")
            if entry.tenant is not None and entry.tenant not in parsed.tenants:
                known = ", ".join(sorted(parsed.tenants)) or "none defined"
                raise ValueError(f"{where}.tenant: {entry.tenant!r} is not under tenants ({known})")
            digest = bytes.fromhex(entry.sha256) if entry.sha256 else _digest(entry.token or "")
            if digest in self._tokens:
                other = self._tokens[digest][0].identity
                raise ValueError(f"{where}: the same token as {other}; give each caller its own")
            caller = Caller(entry.name, entry.tenant, entry.priority)
            self._tokens[digest] = (caller, frozenset(entry.models) if entry.models else None)
        self.tenants = parsed.tenants
        self.gateway = parsed.gateway

    def check(self, authorization: str | None, model: str) -> Caller:
        """The caller a request's Authorization header names, when it may call model."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        found = self._tokens.get(_digest(token.strip()))
        if found is None:
            raise Unauthorized("unknown token")
        caller, allowed = found
        if allowed is not None and model not in allowed:
            raise Forbidden(f"token may not call model {model!r}", caller)
        return caller


def _explain(err: ValidationError, raw: dict[Any, Any]) -> str:
    """Pydantic's errors with their paths written as users write them (tokens by index and name); input values,
    which may be tokens, are left out."""
    problems = []
    for item in err.errors(include_input=False, include_url=False):
        loc = item["loc"]
        path = ""
        for i, part in enumerate(loc):
            if isinstance(part, int):
                path += f"[{part}]"
                entries = raw.get(loc[0]) if i == 1 else None
                entry = entries[part] if isinstance(entries, list) and part < len(entries) else None
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    path += f" ({entry['name']})"
            else:
                path += f".{part}" if path else str(part)
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {message}" if path else message)
    return "; ".join(problems)

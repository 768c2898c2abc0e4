"""Per-tenant limits at the gateway: a token bucket and a concurrency cap per tenant, and a cap on the gateway's
requests in flight that turns batch callers away before interactive ones.

A tenant's limits come from the token file (:mod:`.auth`) and hold per gateway replica, as Envoy's local rate
limits do: the bucket holds ``burst`` requests and refills at ``requestsPerSecond``; ``maxConcurrent`` caps the
tenant's inference requests in flight. The gateway's own ``maxConcurrent`` caps all of them together, and batch
callers are refused once ``batchMaxConcurrent`` are in flight, so interactive callers always find room above it.
A refused request is answered 429 with ``Retry-After`` before its body is read, and never reaches a model.

Checks are ordered so that a refusal takes nothing: rate, then the tenant's cap, then the gateway's; only an
admitted request takes a token from the bucket and a place in flight. Everything runs on the event loop, so no
lock is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .auth import NO_TENANT, Caller, GatewayLimits, TenantLimits, Tokens
from .loopmetrics import CounterChild
from .metrics import TENANT_REQUESTS, THROTTLED

REASONS = ("rate", "concurrency", "overload")


@dataclass
class Throttled(Exception):
    """A request refused by a limit: answered 429 with Retry-After."""

    tenant: str
    reason: str
    """rate, concurrency or overload."""
    limit: dict[str, Any]
    """The limit that refused it, as the token file names it."""
    retry_after: float
    """Seconds until the request would be admitted (rate), or a second when that depends on others (concurrency)."""
    message: str

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {
            "error": self.message,
            "tenant": self.tenant,
            "reason": self.reason,
            "limit": self.limit,
            "retryAfterSeconds": round(self.retry_after, 3),
        }

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, as the header takes them: rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


class Tenant:
    """One tenant's token bucket and requests in flight."""

    __slots__ = ("in_flight", "level", "limits", "name", "size", "stamp")

    def __init__(self, name: str, limits: TenantLimits, now: float):
        self.name = name
        self.limits = limits
        self.size = float(limits.bucket) if limits.requests_per_second is not None else 0.0
        self.level = self.size
        self.stamp = now
        self.in_flight = 0

    def relimit(self, limits: TenantLimits, now: float) -> None:
        """New limits from a reloaded file; what the bucket holds and what is in flight carry over."""
        self.refill(now)
        had_rate = self.limits.requests_per_second is not None
        self.limits = limits
        self.size = float(limits.bucket) if limits.requests_per_second is not None else 0.0
        self.level = min(self.level, self.size) if had_rate else self.size

    def refill(self, now: float) -> None:
        rate = self.limits.requests_per_second
        if rate is not None:
            self.level = min(self.size, self.level + (now - self.stamp) * rate)
        self.stamp = now


class Admission:
    """Admits or refuses each inference request by its caller's tenant and priority."""

    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}
        self.gateway: GatewayLimits | None = None
        self.in_flight = 0
        self._counted: dict[tuple[str, str, int], CounterChild] = {}

    def load(self, tokens: Tokens | None, now: float) -> None:
        """Take the limits of a (re)loaded token file: tenants that stay keep their bucket and requests in flight."""
        tenants: dict[str, Tenant] = {}
        for name, limits in (tokens.tenants if tokens is not None else {}).items():
            tenant = self.tenants.get(name)
            if tenant is None:
                tenant = Tenant(name, limits, now)
            else:
                tenant.relimit(limits, now)
            tenants[name] = tenant
        self.tenants = tenants  # one assignment: a request sees the old tenants or the new ones
        self.gateway = tokens.gateway if tokens is not None else None
        for name in (*tenants, NO_TENANT):  # series at 0, so the first refusal is an increase rate() sees
            for reason in REASONS:
                THROTTLED.labels(name, reason)

    def admit(self, caller: Caller, now: float) -> Tenant | None:
        """Take a place for the request, or raise Throttled; the result goes back to release() when it is done."""
        tenant = self.tenants.get(caller.tenant) if caller.tenant is not None else None
        rate = None
        if tenant is not None:
            limits = tenant.limits
            rate = limits.requests_per_second
            if rate is not None:
                tenant.refill(now)
                if tenant.level < 1:
                    wait = (1 - tenant.level) / rate
                    limit = {"requestsPerSecond": rate, "burst": int(tenant.size)}
                    message = (
                        f"tenant {tenant.name!r} is over its rate limit of {rate:g} requests per second "
                        f"(burst {int(tenant.size)}); retry in {wait:.3g} s"
                    )
                    raise self._refuse(tenant.name, "rate", limit, wait, message)
            cap = limits.max_concurrent
            if cap is not None and tenant.in_flight >= cap:
                message = f"tenant {tenant.name!r} has {cap} requests in flight, its maxConcurrent; retry when one ends"
                raise self._refuse(tenant.name, "concurrency", {"maxConcurrent": cap}, 1.0, message)
        gateway = self.gateway
        if gateway is not None:
            batch = caller.priority == "batch"
            cap = gateway.batch if batch else gateway.max_concurrent
            if self.in_flight >= cap:
                name = "batchMaxConcurrent" if batch else "maxConcurrent"
                message = (
                    f"the gateway has {self.in_flight} requests in flight, its {name} for {caller.priority} "
                    "callers; retry shortly"
                )
                raise self._refuse(caller.tenant or NO_TENANT, "overload", {name: cap}, 1.0, message)
        if tenant is not None:
            if rate is not None:
                tenant.level -= 1
            tenant.in_flight += 1
        self.in_flight += 1
        return tenant

    def release(self, tenant: Tenant | None) -> None:
        """The request admitted for tenant is done."""
        self.in_flight -= 1
        if tenant is not None:
            tenant.in_flight -= 1

    @staticmethod
    def _refuse(tenant: str, reason: str, limit: dict[str, Any], wait: float, message: str) -> Throttled:
        THROTTLED.labels(tenant, reason).inc()
        return Throttled(tenant, reason, limit, wait, message)

    def count(self, caller: Caller, code: int) -> None:
        """Count an answered inference request for its caller's tenant."""
        key = (caller.tenant or NO_TENANT, caller.priority, code)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = TENANT_REQUESTS.labels(key[0], key[1], str(code))
        child.inc()


class TenancyCollector(Collector):
    """Requests in flight per tenant and the limits in force, read from the admission state at scrape time."""

    def __init__(self, admission: Admission):
        self.admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        admission = self.admission
        in_flight = GaugeMetricFamily(
            "kubeforge_gateway_in_flight",
            "Inference requests in flight at the gateway by the caller's tenant (none: callers without one)",
            labels=["tenant"],
        )
        limit = GaugeMetricFamily(
            "kubeforge_gateway_tenant_limit",
            "A tenant's limits from the token file: requests_per_second, burst, max_concurrent",
            labels=["tenant", "limit"],
        )
        for name, tenant in admission.tenants.items():
            in_flight.add_metric([name], tenant.in_flight)
            values = (tenant.limits.requests_per_second, tenant.size or None, tenant.limits.max_concurrent)
            for key, value in zip(("requests_per_second", "burst", "max_concurrent"), values, strict=True):
                if value is not None:
                    limit.add_metric([name, key], value)
        in_flight.add_metric([NO_TENANT], admission.in_flight - sum(t.in_flight for t in admission.tenants.values()))
        yield in_flight
        yield limit
        gateway = GaugeMetricFamily(
            "kubeforge_gateway_max_concurrent",
            "Requests in flight at which the gateway turns callers of a priority away (token file's gateway section)",
            labels=["priority"],
        )
        if admission.gateway is not None:
            gateway.add_metric(["interactive"], admission.gateway.max_concurrent)
            gateway.add_metric(["batch"], admission.gateway.batch)
        yield gateway

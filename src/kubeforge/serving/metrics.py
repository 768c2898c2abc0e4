"""The gateway's Prometheus metrics: what canary analysis and dashboards query.

Every series about model traffic carries model, version and role, so error rate and
latency percentiles can be computed per version and compared between stable and canary.
Upstream series count each try (a canary error that a fallback hid still counts against
the canary); request series count what callers saw. The series every request updates are
:mod:`.loopmetrics` families (plain numbers on the event loop), the rest prometheus_client's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import loopmetrics

REGISTRY = CollectorRegistry()

# From 100 µs (a gateway hop, a small model on a GPU) to 10 s (a timeout), in 1-2.5-5 steps, and finer
# between 1 and 10 ms where most CPU models answer, so percentiles interpolated in a bucket stay close.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
# Symmetric around 0 and as fine as the latency buckets from 1 to 100 ms, so the delta percentiles the
# operator interpolates from them stay within a few milliseconds where shadows usually differ.
_DELTA_STEPS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_DELTA_BUCKETS = (*(-s for s in reversed(_DELTA_STEPS)), 0, *_DELTA_STEPS)
_LABELS = ("model", "version", "role")

REQUESTS = loopmetrics.Counter(
    "kubeforge_gateway_requests",
    "Inference requests answered by the gateway, by the version that answered and HTTP status code",
    [*_LABELS, "code"],
    registry=REGISTRY,
)
REQUEST_DURATION = loopmetrics.Histogram(
    "kubeforge_gateway_request_duration_seconds",
    "Time from request received to response ready in the gateway, by the version that answered",
    _LABELS,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_REQUESTS = loopmetrics.Counter(
    "kubeforge_upstream_requests",
    "Tries sent to Triton (live and shadow), one per caller's request also where the gateway joined several into one "
    "Triton request; outcome ok, error (5xx, refused, reset), timeout, or not_ready (not sent: the version was known "
    "not to be ready, and the stable version answered instead)",
    [*_LABELS, "outcome"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = loopmetrics.Histogram(
    "kubeforge_upstream_request_duration_seconds",
    "Duration of one try against Triton, observed once per caller's request in it",
    _LABELS,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOINS = loopmetrics.Counter(
    "kubeforge_gateway_joins",
    "Triton requests that carried several callers' requests joined (spec.gateway.joinRequests)",
    _LABELS,
    registry=REGISTRY,
)
JOINED = loopmetrics.Counter(
    "kubeforge_gateway_joined_requests",
    "Callers' requests the gateway sent to Triton joined with others in one request (spec.gateway.joinRequests)",
    _LABELS,
    registry=REGISTRY,
)
FALLBACK_REASONS = ("error", "timeout", "not_ready")
FALLBACKS = Counter(
    "kubeforge_fallbacks",
    "Requests retried on the stable version, by the version that failed and why (error, timeout, not_ready)",
    ["model", "version", "role", "reason"],
    registry=REGISTRY,
)
SHADOW_REQUESTS = Counter(
    "kubeforge_shadow_requests",
    "Mirrored requests by outcome: ok, error, dropped (queue full)",
    ["model", "version", "outcome"],
    registry=REGISTRY,
)
SHADOW_PREDICTIONS = Counter(
    "kubeforge_shadow_predictions",
    "Mirrored predictions (rows) compared with the live answer: agree or disagree",
    ["model", "version", "result"],
    registry=REGISTRY,
)
SHADOW_LATENCY_DELTA = Histogram(
    "kubeforge_shadow_latency_delta_seconds",
    "Shadow try duration minus the live try duration of the same request",
    ["model", "version"],
    buckets=_DELTA_BUCKETS,
    registry=REGISTRY,
)
# The histogram above has negative buckets, for which Prometheus clients expose no _sum; without
# this running sum its observations would give percentiles but no mean.
SHADOW_LATENCY_DELTA_SUM = Gauge(
    "kubeforge_shadow_latency_delta_sum_seconds",
    "Running sum of shadow minus live try durations (negative when the shadow is faster); divided by "
    "kubeforge_shadow_latency_delta_seconds_count it gives the mean delta",
    ["model", "version"],
    registry=REGISTRY,
)
GRPC_REQUESTS = Counter(
    "kubeforge_gateway_grpc_requests",
    "Calls of the gateway's gRPC service by method and gRPC status code; inference calls are also in the "
    "per-version request series, with the HTTP status the same refusal or answer has over REST",
    ["method", "code"],
    registry=REGISTRY,
)
RELOADS = Counter(
    "kubeforge_route_table_reloads",
    "Route table (and token file) reloads by result: ok or failed (the previous one stays in force)",
    ["file", "result"],
    registry=REGISTRY,
)
FEATURE_LOOKUP_DURATION = Histogram(
    "kubeforge_feature_lookup_duration_seconds",
    "Time a request waited for its one online-store read of entity features (all its rows at once)",
    ["namespace", "featureview"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
FEATURE_LOOKUP_MISSES = Counter(
    "kubeforge_feature_lookup_misses",
    "Feature values (entity x feature) the online store could not serve: kind missing (no value) or expired "
    "(older than the view's ttl); counted whether or not a declared default stood in",
    ["namespace", "featureview", "kind"],
    registry=REGISTRY,
)

DRIFT_ERRORS = Counter(
    "kubeforge_drift_errors",
    "Answered requests whose input or predictions could not be counted for drift (the request was served)",
    _LABELS,
    registry=REGISTRY,
)
DRIFT_DROPPED = Counter(
    "kubeforge_drift_dropped",
    "Answered requests left out of drift because too many were waiting to be counted",
    _LABELS,
    registry=REGISTRY,
)
PAYLOAD_RECORDS = Counter(
    "kubeforge_payload_records",
    "Sampled requests for the payload log by outcome: written, dropped (the writer's queue was full) or failed",
    ["model", "outcome"],
    registry=REGISTRY,
)


class TargetMetrics:
    """Metric children bound to one version, so the request path does no label lookups."""

    def __init__(self, model: str, version: str, role: str):
        labels = (model, version, role)
        self.duration = REQUEST_DURATION.labels(*labels)
        self.upstream_duration = UPSTREAM_DURATION.labels(*labels)
        self.ok = UPSTREAM_REQUESTS.labels(*labels, "ok")
        self.error = UPSTREAM_REQUESTS.labels(*labels, "error")
        self.timeout = UPSTREAM_REQUESTS.labels(*labels, "timeout")
        self.joins = JOINS.labels(*labels)
        self.joined = JOINED.labels(*labels)
        self.labels = labels
        self._codes: dict[int, loopmetrics.CounterChild] = {}

    def answered(self, code: int, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = REQUESTS.labels(*self.labels, str(code))
        child.inc()
        self.duration.observe(seconds)


FEEDBACK_LABELS = Counter(
    "kubeforge_feedback_labels",
    "Labels posted to the feedback endpoint by result: joined (to the answer of that request id), unknown (no "
    "answered request with that id is remembered) or expired (answered longer than the ttl ago); version and role "
    "are those of the answer, empty when nothing was joined",
    [*_LABELS, "result"],
    registry=REGISTRY,
)
FEEDBACK_EVICTED = Counter(
    "kubeforge_feedback_evicted",
    "Answered requests forgotten before their ttl because the join store held maxPending others: labels for them "
    "count as unknown (raise maxPending or send labels sooner)",
    ["model"],
    registry=REGISTRY,
)

# Tenants come from the token file only (callers without one are "none"), so these series stay bounded.
THROTTLED = Counter(
    "kubeforge_gateway_throttled",
    "Inference requests answered 429 before reaching a model, by the caller's tenant (none: no tenant) and reason: "
    "rate (the tenant's requestsPerSecond), concurrency (the tenant's maxConcurrent) or overload (the gateway's "
    "maxConcurrent; batch callers are turned away first, at batchMaxConcurrent)",
    ["tenant", "reason"],
    registry=REGISTRY,
)
TENANT_REQUESTS = loopmetrics.Counter(
    "kubeforge_gateway_tenant_requests",
    "Inference requests by the caller's tenant (none: no tenant), priority (interactive or batch) and HTTP status "
    "code, throttled ones included",
    ["tenant", "priority", "code"],
    registry=REGISTRY,
)
ACCESS_LOG_LINES = Counter(
    "kubeforge_gateway_access_log_lines",
    "Access log lines by outcome: written, dropped (the writer fell too far behind) or failed (the write failed)",
    ["outcome"],
    registry=REGISTRY,
)

"""ModelDeployment: serve a registered model with Triton behind the kubeforge gateway.

The rollout fields follow Flagger's Canary (steps, analysis interval, failure limit,
metric thresholds) and the model fields follow KServe's InferenceService runtime
settings, in one resource that also follows an MLflow registry alias.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .meta import (
    Conditions,
    CRDInfo,
    Duration,
    FailureInfo,
    KubeModel,
    ObjectName,
    PrinterColumn,
    Quantity,
    RegistryName,
    Resource,
    age_column,
    exactly_one_of,
    ready_column,
    reason_column,
)
from .retrain import Retrain, RetrainRecord

ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"

# Metrics the analysis knows without a query: they are read from the gateway's own metrics.
BUILTIN_METRICS: dict[str, str] = {
    "error-rate": "fraction of canary requests that failed (0..1); use max",
    "latency-p99": "99th percentile canary latency in milliseconds; use max",
    "latency-p50": "median canary latency in milliseconds; use max",
    "agreement": "fraction of compared predictions where the canary agrees with stable (0..1); use min",
    "drift-psi": "largest PSI of the canary's inputs against its training baseline over the drift window; use max",
    "drift-ks": "largest KS statistic of the canary's inputs against its training baseline; use max",
    "accuracy": "fraction of the canary's labelled predictions that were right over the feedback window (0..1); "
    "needs labels posted to the gateway's feedback endpoint (classification); use min",
    "mae": "mean absolute error of the canary's labelled predictions over the feedback window; needs labels posted "
    "to the gateway's feedback endpoint (regression); use max",
}


class ModelRef(KubeModel):
    """A registered model in MLflow, by alias or by version."""

    model_config = exactly_one_of("alias", "version")

    name: RegistryName
    """Registered model name in MLflow."""
    alias: Annotated[str, Field(pattern=ALIAS_PATTERN, max_length=255)] | None = None
    """Registry alias to resolve (e.g. champion). Set this or version."""
    version: Annotated[int, Field(ge=1)] | None = None
    """Exact registered version. Set this or alias."""

    @model_validator(mode="after")
    def _alias_or_version(self) -> ModelRef:
        if (self.alias is None) == (self.version is None):
            raise ValueError("set exactly one of alias or version")
        return self


class DynamicBatching(KubeModel):
    """Triton dynamic batching: requests wait briefly to be batched together."""

    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=10_000_000)] = 100
    """Longest a request waits for others to batch with."""
    preferred_batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(max_length=16)] = Field(
        default_factory=list
    )
    """Batch sizes Triton tries to form; empty lets it use the largest it can."""


class TritonRuntime(KubeModel):
    """How each model version is served by Triton."""

    backend: Literal["python", "pytorch_libtorch"] = "python"
    """python runs the TorchScript model with torch in Triton's python backend (any Triton build);
    pytorch_libtorch uses the libtorch backend of NVIDIA's Triton images."""
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Triton container image; the operator's default when omitted."""
    max_batch_size: Annotated[int, Field(ge=0, le=65536)] = 64
    """Largest batch Triton accepts; 0 disables batching."""
    dynamic_batching: DynamicBatching | None = None
    """Enable dynamic batching with these settings."""
    instances: Annotated[int, Field(ge=1, le=64)] = 1
    """Model instances per Triton server (instance_group count)."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """NVIDIA GPUs per Triton replica; instances run as KIND_GPU when > 0."""
    cpu: Quantity = "1"
    """CPU requested per Triton replica, e.g. 2 or 500m: what the scheduler sets aside for it and what autoscaling's
    CPU utilisation is measured against. Requested, not limited: a CPU limit throttles the server in 100 ms
    periods, which callers see as tail latency."""
    memory: Quantity = "2Gi"
    """Memory requested and limited per Triton replica, e.g. 4Gi; a replica that grows past it is restarted. With the
    python backend each of the instances is a process of its own that loads torch."""


class GatewaySpec(KubeModel):
    """The inference gateway in front of every version (one gateway per ModelDeployment): its pods, and whether it
    joins small requests."""

    replicas: Annotated[int, Field(ge=1, le=100)] = 1
    """Gateway pods behind its Service. One process keeps up with a Triton answering thousands of requests a second
    (see cpu); more spread the load and outlive a pod. Canary analysis adds up every replica's counts. What each
    replica keeps is its own: tenant limits hold per replica, drift and live quality are windows over its share of
    the traffic (analysis and alerts take the worst), and each holds its own payload log. A feedback label or a data
    set request may reach any replica: it asks the others for the answers it did not give."""
    cpu: Quantity = "1"
    """CPU requested for the gateway, e.g. 2 or 500m. It spends about 0.1-0.25 ms of CPU per one-row request, so
    with a core of its own it keeps up with a Triton answering thousands a second; requested, not limited, for the
    same reason as Triton's."""
    memory: Quantity = "1Gi"
    """Memory requested and limited for the gateway, e.g. 2Gi; feedback's answers waiting for labels
    (monitoring.feedback.maxPending, about 450 bytes each) live in it."""
    join_requests: bool = False
    """Join the small requests to one version that reach a gateway replica at the same moment (one turn of its event
    loop, no timer) into one Triton request of up to runtime.maxBatchSize rows, and split the answer: Triton then spends
    a fifth to a half less CPU per request (docs/benchmarks.md). For many concurrent one-row callers over REST (JSON or
    binary tensors); gRPC calls join too, but seldom meet in one turn. A lone request, and one with parameters Triton
    reads per request, go as they came; a joined request Triton refuses is sent again one by one, so each caller gets
    Triton's verdict on its own input. Triton's own request counts then count joined requests; the gateway's count
    callers' requests."""


class Autoscaling(KubeModel):
    """Horizontal autoscaling of each version's Triton replicas."""

    min_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Fewest replicas."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    """Most replicas."""
    target_cpu_utilization: Annotated[int, Field(ge=1, le=100)] = 80
    """Average CPU utilisation (percent of request) to scale at."""

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be >= minReplicas")
        return self


class CanaryStep(KubeModel):
    """One step of a canary rollout."""

    weight: Annotated[int, Field(ge=1, le=100)]
    """Percent of live traffic sent to the canary during this step."""
    pause: Duration = "1m"
    """How long the step lasts before analysis may advance it."""


class AnalysisMetric(KubeModel):
    """A check run every analysis interval; the canary fails the check when out of bounds."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": ["query"]}, {"properties": {"name": {"enum": list(BUILTIN_METRICS)}}}],
        }
    )

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    """A built-in metric (error-rate, latency-p99, latency-p50, agreement, drift-psi, drift-ks, accuracy, mae) or,
    with query, any name."""
    query: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """PromQL returning one number for a custom metric; {{canary}} and {{stable}} expand to the versions' labels."""
    max: float | None = None
    """Fail when the value is above this."""
    min: float | None = None
    """Fail when the value is below this."""

    @model_validator(mode="after")
    def _known_and_bounded(self) -> AnalysisMetric:
        if self.query is None and self.name not in BUILTIN_METRICS:
            raise ValueError(
                f"unknown metric {self.name!r}: use one of {', '.join(BUILTIN_METRICS)} or give a PromQL query"
            )
        if self.max is None and self.min is None:
            raise ValueError(f"metric {self.name!r} needs a threshold: set max or min")
        return self


class Analysis(KubeModel):
    """Metric checks that gate each canary step."""

    interval: Duration = "30s"
    """How often the metrics are checked."""
    failure_limit: Annotated[int, Field(ge=1, le=100)] = 2
    """Failed checks in a row that roll the canary back."""
    min_requests: Annotated[int, Field(ge=0, le=1_000_000)] = 20
    """Canary requests needed in an interval before its metrics count; fewer is neither pass nor fail."""
    compare_percent: Annotated[int, Field(ge=1, le=100)] = 50
    """With the agreement metric: percent of requests answered by stable that are also sent to the canary
    (answers compared, never returned) to measure how often the two agree."""
    metrics: Annotated[list[AnalysisMetric], Field(min_length=1, max_length=32)] = Field(
        default_factory=lambda: [AnalysisMetric(name="error-rate", max=0.01)]
    )
    """Checks to run; by default the canary error rate must stay at or below 1 %."""


class Canary(KubeModel):
    """Progressive rollout of a new model version."""

    model: ModelRef
    """Version to roll out."""
    steps: Annotated[list[CanaryStep], Field(min_length=1, max_length=20)]
    """Traffic steps, with strictly increasing weights; passing the last one promotes the canary."""
    analysis: Analysis = Field(default_factory=Analysis)
    """Checks gating each step."""
    scale_down_delay: Duration = "30s"
    """How long the old stable keeps running after a promotion, so in-flight requests finish."""

    @model_validator(mode="after")
    def _increasing(self) -> Canary:
        weights = [s.weight for s in self.steps]
        for i in range(1, len(weights)):
            if weights[i] <= weights[i - 1]:
                raise ValueError(
                    f"steps[{i}].weight is {weights[i]}, not more than steps[{i - 1}].weight {weights[i - 1]}: "
                    "weights must strictly increase"
                )
        return self


class Shadow(KubeModel):
    """A version that receives a mirror of live traffic; its answers are compared, never returned."""

    model: ModelRef
    """Version to mirror traffic to."""
    percent: Annotated[int, Field(ge=1, le=100)] = 100
    """Percent of live requests mirrored."""


class Fallback(KubeModel):
    """Retry a failed request once on the stable version."""

    enabled: bool = True
    """Retry on the stable version when the chosen version errors, times out or is not ready."""
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 5000
    """Per-try timeout of an upstream request, in milliseconds."""


class Routing(KubeModel):
    """How requests are assigned to versions."""

    sticky_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$", max_length=128)] | None = None
    """Request header whose value pins a caller to one version (A/B tests); weighted random when omitted."""


class FeatureEnrichment(KubeModel):
    """Fill model inputs from a FeatureView's online store."""

    feature_view: ObjectName
    """FeatureView in the same namespace."""
    entity_key: Annotated[str, Field(min_length=1, max_length=256)]
    """Name of the request's input tensor that carries the entity keys (INT64 or BYTES, one per row); the gateway
    replaces it with the model's feature tensor, read from the FeatureView's online store."""


class SecretRef(KubeModel):
    """Reference to a Secret in the same namespace."""

    name: ObjectName
    """Secret name."""


class Auth(KubeModel):
    """Bearer-token authentication at the gateway, and the tenants and limits of the callers."""

    secret_ref: SecretRef
    """Secret whose key `tokens` lists one token per line, optionally `token model1,model2` to limit it; or YAML
    whose `tokens` name each token's caller, tenant and priority (interactive or batch), with each tenant's
    requestsPerSecond, burst and maxConcurrent under `tenants` and the gateway's maxConcurrent under `gateway`.
    The gateway reloads it when the Secret changes and keeps the last good one when it is refused."""


class DriftMonitoring(KubeModel):
    """Drift of live inputs and predictions from each version's training baseline, at the gateway."""

    enabled: bool = True
    """Track drift (a version registered without a baseline is served without it, and status says so)."""
    window: Duration = "5m"
    """Sliding window the PSI and KS statistics cover."""
    min_samples: Annotated[int, Field(ge=10, le=10_000_000)] = 500
    """Rows a window needs before PSI and KS are reported (with 20 bins, fewer rows read as drift on their own)."""
    psi_threshold: Annotated[float, Field(gt=0, le=10)] = 0.2
    """PSI above which the drift alert fires (0.1 small, 0.2 significant, by common convention)."""
    alert_after: Duration = "15m"
    """How long PSI must stay above the threshold before the drift alerts fire (where the deployment gets its own
    PrometheusRule: clusters with the Prometheus Operator, and the local platform; the shared rules hold 15m)."""


class FeedbackMonitoring(KubeModel):
    """Live model quality from labels that arrive after the answer, joined at the gateway by request id."""

    enabled: bool = True
    """Remember answered requests so labels posted to /v2/models/{name}/feedback can be joined to them."""
    window: Duration = "10m"
    """Sliding window live accuracy (classification) or MAE and RMSE (regression) cover."""
    min_labels: Annotated[int, Field(ge=1, le=10_000_000)] = 50
    """Labels a window needs before live quality is reported (and the accuracy and mae analysis metrics count)."""
    ttl: Duration = "24h"
    """How long an answered request can still be labelled; a later label is counted as expired."""
    max_pending: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    """Answered requests remembered for joining at most (the oldest are forgotten first): bounds the gateway's
    memory, about 500 bytes each (50 MB at the default)."""


class PayloadLog(KubeModel):
    """Sampled request and response records, for debugging and for joining delayed labels later."""

    sample_percent: Annotated[float, Field(ge=0, le=100)] = 1.0
    """Percent of answered requests recorded."""
    redact: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=256)] = Field(
        default_factory=list
    )
    """Input names whose values are replaced by "[redacted]" before a record leaves the gateway."""
    max_file_mb: Annotated[int, Field(ge=1, le=10_240)] = 64
    """Size at which a log file is rotated."""
    max_files: Annotated[int, Field(ge=1, le=1000)] = 5
    """Rotated files kept, besides the current one."""


class Monitoring(KubeModel):
    """What the gateway observes beyond latency and errors."""

    drift: DriftMonitoring = Field(default_factory=DriftMonitoring)
    """Input and prediction drift per version."""
    feedback: FeedbackMonitoring = Field(default_factory=FeedbackMonitoring)
    """Delayed labels joined to answered requests: live accuracy or error per version."""
    payload_log: PayloadLog | None = None
    """Record sampled requests and responses (off unless set)."""


class SLO(KubeModel):
    """Service level objectives; alerts fire when the error budget burns too fast or latency exceeds its target."""

    latency_p99_ms: Annotated[float, Field(gt=0, le=600_000)] | None = None
    """Target 99th percentile latency of answered requests, in milliseconds."""
    error_rate_percent: Annotated[float, Field(gt=0, lt=100)] | None = None
    """Error budget: percent of requests allowed to fail (5xx), e.g. 0.1 for 99.9 % availability."""


class Policy(KubeModel):
    """Governance: what has to happen before a version is rolled out."""

    require_approval: bool = False
    """No version becomes stable, canary or shadow until it is approved in the MLflow registry (`kubeforge model
    approve NAME VERSION`); the deployment says AwaitingApproval, naming the version and the command, and proceeds
    by itself once it is approved. A rejected version (`kubeforge model reject`) is never rolled out."""


class ModelDeploymentSpec(KubeModel):
    """Desired state of a ModelDeployment."""

    model: ModelRef
    """Stable model version; with an alias, the version it points at when the deployment is created."""
    follow_alias: bool = False
    """When the alias in model moves to a new version, roll that version out as a canary (needs canary.steps)."""
    runtime: TritonRuntime = Field(default_factory=TritonRuntime)
    """Triton settings for every version."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Triton replicas per version when autoscaling is not set."""
    autoscaling: Autoscaling | None = None
    """Scale each version's Triton replicas on CPU (utilisation of runtime.cpu); a change of runtime or bounds keeps
    the replicas the autoscaler chose, within the new bounds."""
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    """Replicas, CPU and memory of the gateway, and whether it joins small requests."""
    canary: Canary | None = None
    """Roll a new version out progressively, gated by metrics."""
    shadow: Shadow | None = None
    """Mirror traffic to a version and report how it compares."""
    fallback: Fallback = Field(default_factory=Fallback)
    """Retry failed requests on the stable version."""
    routing: Routing = Field(default_factory=Routing)
    """Sticky assignment of callers to versions."""
    features: FeatureEnrichment | None = None
    """Enrich requests with online features."""
    auth: Auth | None = None
    """Require bearer tokens at the gateway."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    """Drift tracking and payload logging at the gateway."""
    slo: SLO | None = None
    """Objectives the generated alerts hold the deployment to."""
    retrain: Retrain | None = None
    """Train a new version when the model drifts, loses accuracy or is due; it rolls out through the canary."""
    policy: Policy = Field(default_factory=Policy)
    """Approval gates for rollouts."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelDeploymentSpec:
        if self.follow_alias and self.model.alias is None:
            raise ValueError("followAlias needs model.alias: set an alias to follow, or drop followAlias")
        feedback = self.retrain.dataset.from_feedback if self.retrain and self.retrain.dataset else None
        if self.auth is not None and feedback is not None and feedback.token_secret_ref is None:
            raise ValueError(
                "retrain.dataset.fromFeedback.tokenSecretRef is required with auth: the gateway refuses the retrain's "
                "trainer without a token; name a Secret key holding one of the gateway's tokens"
            )
        return self


Role = Literal["stable", "canary", "shadow"]


class TrafficTarget(KubeModel):
    """Share of traffic one version gets."""

    version: str
    """Registered model version."""
    role: Role
    """stable, canary or shadow (shadow percent is mirrored, not served)."""
    percent: Annotated[int, Field(ge=0, le=100)]
    """Percent of live requests."""


class MetricResult(KubeModel):
    """Outcome of one metric check."""

    name: str
    """Metric name."""
    value: float | None = None
    """Measured value; empty when there was not enough data."""
    threshold: str
    """The bound it was checked against, e.g. "<= 0.01"."""
    passed: bool | None = None
    """True or false; empty when there was not enough data."""


class AnalysisStatus(KubeModel):
    """The most recent canary analysis."""

    time: str | None = None
    """When it ran (RFC 3339)."""
    failed_checks: Annotated[int, Field(ge=0)] = 0
    """Failed checks in a row so far."""
    results: list[MetricResult] = Field(default_factory=list)
    """Per-metric outcomes."""


class ShadowReport(KubeModel):
    """How the shadow version compares with live answers."""

    version: str | None = None
    """Shadow version."""
    samples: Annotated[int, Field(ge=0)] = 0
    """Mirrored requests compared."""
    agreement: float | None = None
    """Fraction of mirrored requests where shadow and live agree (classes equal / relative error within tolerance)."""
    latency_delta_ms: float | None = None
    """Mean shadow latency minus live latency of the same request, in milliseconds (negative: shadow faster)."""
    latency_delta_p50_ms: float | None = None
    """Median of shadow minus live latency, in milliseconds, interpolated within the gateway's histogram buckets."""
    latency_delta_p99_ms: float | None = None
    """99th percentile of shadow minus live latency, in milliseconds, interpolated as the median is."""


class RetiringVersion(KubeModel):
    """A replaced stable version that keeps running briefly so in-flight requests finish."""

    version: str
    """Registered model version."""
    after: str
    """When its Triton is removed (RFC 3339)."""


HISTORY_LIMIT = 20
"""Rollout decisions status.history keeps; older ones remain as Events while the API server keeps those."""

HistoryAction = Literal[
    "Select",
    "Replace",
    "Start",
    "Step",
    "Restart",
    "Interrupt",
    "Promote",
    "Rollback",
    "Withdraw",
    "Shadow",
    "AwaitApproval",
    "Refuse",
    "Retrain",
    "Reexport",
]


class HistoryEntry(KubeModel):
    """One rollout decision the operator made; each is also posted as an Event."""

    time: str
    """When it was made (RFC 3339)."""
    action: HistoryAction
    """Select (first stable version), Replace (a pinned version replaced the stable one), Start (a canary rollout
    began), Step (the canary's weight rose), Restart (an interrupted step started over), Interrupt (the canary's
    traffic was taken away while a Triton was not ready), Promote, Rollback, Withdraw (a canary stopped without a
    verdict), Shadow (mirroring to a version started or stopped), AwaitApproval (a version waits for approval), Refuse
    (a rejected version is not rolled out), Retrain (spec.retrain started a TrainingJob, or one failed), Reexport (a
    served version is another registration now, its model deleted and registered again: its Triton restarts to
    export it)."""
    version: str | None = None
    """The model version it concerns."""
    reason: str
    """CamelCase reason; for a rollback the failed analysis, otherwise the reason of the Event posted with it."""
    message: str
    """What was decided and why."""


class ModelDeploymentStatus(KubeModel):
    """Observed state of a ModelDeployment, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status describes."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Progressing, Degraded, CanaryReady, Promoted, RolledBack, DriftMonitored; Approved with
    spec.policy.requireApproval; Retraining with spec.retrain."""
    stable_version: str | None = None
    """Version serving the stable share."""
    canary_version: str | None = None
    """Version being rolled out."""
    canary_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Percent of traffic on the canary now."""
    shadow_version: str | None = None
    """Version receiving mirrored traffic."""
    current_step: Annotated[int, Field(ge=0)] | None = None
    """Index of the canary step in progress."""
    step_started: str | None = None
    """When the current step started (RFC 3339)."""
    traffic: list[TrafficTarget] = Field(default_factory=list)
    """Traffic split now in force."""
    analysis: AnalysisStatus | None = None
    """Latest canary analysis."""
    rolled_back_version: str | None = None
    """Last version the analysis rolled back; it is not rolled out again until the target moves to another one."""
    retiring: list[RetiringVersion] = Field(default_factory=list)
    """Old stable versions still running until their scale-down delay passes."""
    shadow_report: ShadowReport | None = None
    """Shadow comparison."""
    url: str | None = None
    """Inference endpoint (Open Inference Protocol v2)."""
    grpc_url: str | None = None
    """The same endpoint over gRPC, as host:port: the Open Inference Protocol's GRPCInferenceService
    (tritonclient.grpc, perf_analyzer -i grpc), with the same routing, auth, metrics and drift as url."""
    last_failure: FailureInfo | None = None
    """Last failure, kept after recovery for reference."""
    last_retrain: RetrainRecord | None = None
    """The last retrain spec.retrain started: why, when, and its TrainingJob."""
    history: Annotated[list[HistoryEntry], Field(max_length=HISTORY_LIMIT)] = Field(default_factory=list)
    """The last 20 rollout decisions, oldest first: starts, steps, promotions, rollbacks and why, approval waits and
    refusals, retrains."""


class ModelDeployment(Resource):
    """Serves a registered model with Triton, with canary, shadow and fallback routing."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="modeldeployments",
        short_names=("md",),
        printer_columns=(
            PrinterColumn("Model", ".spec.model.name", description="Registered model name"),
            PrinterColumn("Stable", ".status.stableVersion", description="Stable version"),
            PrinterColumn("Canary", ".status.canaryVersion", description="Canary version"),
            PrinterColumn("Weight", ".status.canaryWeight", "integer", "Percent of traffic on the canary"),
            PrinterColumn("Shadow", ".status.shadowVersion", description="Shadow version", priority=1),
            ready_column(),
            reason_column(),
            PrinterColumn("URL", ".status.url", description="Inference endpoint", priority=1),
            age_column(),
        ),
    )

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec
    """Desired state."""
    status: ModelDeploymentStatus | None = None
    """Observed state, written by the operator."""

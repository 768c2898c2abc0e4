"""The route table: which Triton answers for which model version, and how traffic splits.

The operator writes it (a ConfigMap mounted into the gateway); the gateway reads it and
hot-reloads it. Live traffic splits between the stable and canary versions by integer
weights, either at random or, with a sticky header, by a stable hash of the header's
value, so an A/B caller stays on one version for as long as the weights do not change.
A shadow version gets a mirror of a percentage of requests and never answers a caller.

A model fed from a FeatureView names the view and the request input that carries entity
keys; each version lists the features it was trained on in its input order, since the
stable and the canary may have been trained on different ones.

With drift monitoring each version carries its training baseline (the trainer's per-feature
histograms) and what reads its outputs (task, classes), and the model the window settings;
with payload logging the model carries the sampling, redaction and rotation settings; with
feedback the model carries the join store's and the live quality window's settings. Labels are
read the way drift reads predictions: a version's ``drift`` entry says its task and classes; a
version without one is read by the model's ``task``, a classifier's labels then being class
indices (the argmax position of the answer).
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from kubeforge.api.featureview import ValueType
from kubeforge.api.meta import KubeModel, UniqueNames
from kubeforge.api.modeldeployment import DriftMonitoring, FeedbackMonitoring, PayloadLog, Role
from kubeforge.core import yamltext
from kubeforge.core.modelcontract import INPUT_NAME, FeatureHistogram

if TYPE_CHECKING:
    import numpy as np

    from .metrics import TargetMetrics
    from .monitor import Tracked
    from .oip import Schema

Task = Literal["classification", "regression"]
_HISTOGRAMS = TypeAdapter(list[FeatureHistogram])


class VersionDrift(KubeModel):
    """What a version's drift is measured against: its training baseline, and how to read its answers."""

    features: UniqueNames
    """The version's input features in input order (its kubeforge.features tag, else the baseline's order)."""
    baseline: str
    """The histograms of its baseline artifact (a feature without a usable one is not tracked) as one JSON list. Kept
    as text, one YAML string per version: a table is then written and read in a fifteenth to a fiftieth of the time
    its numbers take as YAML, and takes a sixth less of the ConfigMap's 1 MiB
    (docs/benchmarks.md, Gateway, "A large route table"). A list (a table written by an earlier release) is taken
    and kept as its JSON."""
    task: Task | None = None
    """classification (predictions counted by class) or regression (by value); none: predictions not tracked."""
    classes: list[str] | None = None
    """Class labels in output order, for classification."""

    @field_validator("baseline", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return baseline_text(value) if isinstance(value, list) else value

    @field_validator("baseline")
    @classmethod
    def _histograms(cls, text: str) -> str:
        try:
            _HISTOGRAMS.validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(
                f"not a JSON list of feature histograms ({where + ': ' if where else ''}{first['msg']})"
            ) from None
        return text

    def histograms(self) -> list[dict[str, Any]]:
        """The baseline's histograms as the drift tracker reads them."""
        return cast(list[dict[str, Any]], json.loads(self.baseline))


def baseline_text(histograms: list[FeatureHistogram] | list[dict[str, Any]]) -> str:
    """Histograms as a route table carries them: one JSON list."""
    return _HISTOGRAMS.dump_json(_HISTOGRAMS.validate_python(histograms)).decode()


class VersionRoute(KubeModel):
    """One model version and the Triton serving it."""

    version: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
    """Registered model version."""
    role: Role
    """stable, canary or shadow."""
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]
    """Triton's HTTP endpoint, e.g. http://clf-v3.models.svc:8000."""
    endpoints: Annotated[list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]], Field(max_length=1000)] | None = (
        None
    )
    """Every ready replica's HTTP endpoint, url among them, when the operator addresses pods rather than a Service
    that balances over them (endpoints addressing, the local runtime): requests go round-robin over them. Omitted:
    url alone."""
    triton_model: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    """Model name inside Triton; the route's model name when omitted."""
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Share of live traffic (stable and canary; relative to the other's weight)."""
    percent: Annotated[int, Field(ge=0, le=100)] = 0
    """Percent of live requests mirrored to a shadow; for a canary, percent of the requests the stable
    version answered that are also sent to the canary to compare answers (canary agreement)."""
    feature_order: UniqueNames | None = None
    """With features: the version's features in its input order (its kubeforge.features tag); omitted for a
    version that cannot be fed from the view, which then answers only requests that send features inline."""
    drift: VersionDrift | None = None
    """With drift monitoring: the version's baseline; omitted for a version registered without one."""


class FeatureRoute(KubeModel):
    """Where a model's input comes from when a request carries entity keys instead of features."""

    namespace: Annotated[str, Field(min_length=1, max_length=63)]
    """Namespace of the FeatureView: the Feast project it is read from."""
    feature_view: Annotated[str, Field(min_length=1, max_length=253)]
    """FeatureView the values are read from."""
    entity_key: Annotated[str, Field(min_length=1, max_length=256)]
    """Name of the request input that carries one entity key per row."""
    join_key: Annotated[str, Field(min_length=1, max_length=256)]
    """The view's join key the entity keys are looked up by."""
    value_type: ValueType = "INT64"
    """Type of the join key: INT64 and INT32 keys come as an INT64 (or INT32) input, STRING and BYTES as BYTES."""
    ttl_seconds: Annotated[float, Field(ge=0)]
    """The view's ttl: an older value counts as missing (expired)."""
    defaults: dict[str, float] = Field(default_factory=dict)
    """Value per feature used when the online store has none (missing or expired); a feature without one makes
    such a request fail with 422."""

    @model_validator(mode="after")
    def _not_the_model_input(self) -> FeatureRoute:
        if self.entity_key == INPUT_NAME:
            raise ValueError(f"entityKey {INPUT_NAME!r} is the model's own input: requests could not tell them apart")
        return self


class ModelRoute(KubeModel):
    """How requests for one model name are served."""

    versions: Annotated[list[VersionRoute], Field(min_length=1, max_length=3)]
    """One stable, at most one canary and at most one shadow."""
    task: Task = "classification"
    """How shadow answers are compared: argmax agreement (classification) or relative error (regression)."""
    tolerance: Annotated[float, Field(ge=0)] = 0.01
    """Largest relative error at which a regression shadow answer still agrees."""
    sticky_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$", max_length=128)] | None = None
    """Request header whose value pins a caller to a version."""
    fallback: bool = True
    """Retry once on the stable version when the chosen one fails, times out or is not ready."""
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 5000
    """Per-try timeout of an upstream request."""
    join_requests: bool = False
    """Join the small JSON requests to one version that wait at the same moment into one Triton request (see
    serving.joiner)."""
    features: FeatureRoute | None = None
    """Requests may carry entity keys; the gateway reads the features from the online store."""
    drift: DriftMonitoring | None = None
    """Track drift of the versions that carry a baseline, over this window; omitted: no drift tracking."""
    payload_log: PayloadLog | None = None
    """Record sampled requests and answers; omitted: none."""
    feedback: FeedbackMonitoring | None = None
    """Remember answered requests so delayed labels join them (live accuracy or error per version); omitted: no
    feedback endpoint for this model."""

    @model_validator(mode="after")
    def _roles(self) -> ModelRoute:
        roles = Counter(v.role for v in self.versions)
        if roles["stable"] != 1:
            raise ValueError(f"needs exactly one stable version, has {roles['stable']}")
        for role in ("canary", "shadow"):
            if roles[role] > 1:
                raise ValueError(f"at most one {role} version, has {roles[role]}")
        if len({v.version for v in self.versions}) != len(self.versions):
            raise ValueError("a version appears twice")
        if sum(v.weight for v in self.versions if v.role != "shadow") == 0:
            raise ValueError("stable and canary weights are all 0: no version would get traffic")
        if any(v.role == "shadow" and v.weight for v in self.versions):
            raise ValueError("a shadow version has a weight: shadows get a mirror (percent), not traffic")
        return self


class RouteTable(KubeModel):
    """Every model the gateway serves."""

    models: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=255)], ModelRoute]
    """Model name (as clients call it) to its route."""
    peers: Annotated[list[Annotated[str, Field(pattern=r"^http://", max_length=512)]], Field(max_length=100)] | None = (
        None
    )
    """Every replica of the gateway serving this table (itself included), where it runs as several: a replica asks
    the others for what it does not hold itself (the answers labels join, their data sets). Omitted for one."""

    @classmethod
    def parse(cls, text: str | bytes) -> RouteTable:
        """From YAML or JSON (JSON is YAML)."""
        return cls.model_validate(yamltext.load(text))


@dataclass(eq=False)
class Target:
    """A version as the gateway calls it. Kept across reloads (by key) with its readiness, schema and windows, also
    when its addresses change (a replica gone or back: what is known of each replica is kept, see place)."""

    model: str
    version: str
    url: str
    triton_model: str
    role: Role = "stable"
    ready: bool = True  # some replica is not known to be down
    endpoints: tuple[str, ...] = ()  # every replica's address (see VersionRoute.endpoints); empty: url alone
    down: set[str] = field(default_factory=set)  # replicas that refused a connection, until a probe finds them ready
    turn: int = 0  # round-robin position over endpoints
    schema: Schema | None = None  # the version's input schema, once fetched from Triton
    metrics: TargetMetrics | None = None  # labelled metric children, bound once per target
    columns: np.ndarray | None = None  # with features: where its feature_order's features are in Route.lookup
    drift: Tracked | None = None  # with a baseline: its drift tracker and the requests waiting for it
    task: str = "classification"  # how its answers read for feedback: its drift entry's task, else the model's
    classes: tuple[str, ...] | None = None  # class labels in output order (its drift entry's); None: class indices
    features: tuple[str, ...] | None = None  # its input features in order: its drift entry's, else its featureOrder
    splits: bool = True  # its answers to joined requests split by caller (serving.joiner); False once one did not
    in_flight: int = 0  # with joining: its requests on their way to Triton (serving.joiner)
    joining: dict[Any, Any] = field(default_factory=dict)  # with joining: its requests gathering, by join key

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.triton_model, self.version)

    @property
    def base(self) -> str:
        return f"/v2/models/{self.triton_model}/versions/{self.version}"

    @property
    def replicas(self) -> tuple[str, ...]:
        return self.endpoints or (self.url,)

    def address(self, tried: Collection[str] = ()) -> str | None:
        """The replica a request goes to next, round-robin over those not known to be down and not tried by this
        request yet; one known down when no other is left (a probe may be behind); None once every one was tried."""
        replicas = self.replicas
        if len(replicas) == 1:
            return None if tried else replicas[0]
        last_resort = None
        for _ in range(len(replicas)):
            self.turn = (self.turn + 1) % len(replicas)
            url = replicas[self.turn]
            if url in tried:
                continue
            if url not in self.down:
                return url
            last_resort = last_resort or url
        return last_resort

    def mark(self, url: str, ready: bool) -> bool:
        """What a call or probe found of one replica; the version is ready while any of its replicas is. Returns
        whether that is news."""
        if ready == (url not in self.down):
            return False
        if ready:
            self.down.discard(url)
        else:
            self.down.add(url)
        self.ready = any(u not in self.down for u in self.replicas)
        return True

    def place(self, url: str, endpoints: tuple[str, ...]) -> None:
        """The address and replicas a new route table names; what is known of those still named is kept. The schema
        is asked for again where they changed: a new pod may serve the version registered anew."""
        if (url, endpoints) != (self.url, self.endpoints):
            self.url, self.endpoints, self.schema = url, endpoints, None
        self.down &= set(self.replicas)
        self.ready = any(u not in self.down for u in self.replicas)


@dataclass(eq=False)
class Route:
    """A ModelRoute compiled for the request path."""

    name: str
    spec: ModelRoute
    stable: Target
    canary: Target | None = None
    shadow: Target | None = None
    canary_weight: int = 0
    total_weight: int = 1
    shadow_percent: int = 0
    canary_compare_percent: int = 0
    sticky_header: str | None = None
    timeout: float = 5.0
    versions: dict[str, Target] = field(default_factory=dict)
    features: FeatureRoute | None = None
    lookup: tuple[str, ...] = ()  # every feature any version takes: what one online read per request fetches

    def pick(self, sticky_value: str | None = None) -> Target:
        """The version a live request goes to."""
        if self.canary is None or self.canary_weight == 0:
            return self.stable
        if sticky_value is not None:
            point = zlib.crc32(sticky_value.encode()) % self.total_weight
        else:
            point = random.randrange(self.total_weight)
        return self.canary if point < self.canary_weight else self.stable

    def mirrors(self, answered: Target) -> list[Target]:
        """Versions to mirror a request to after answered answered it: the shadow, and the canary
        when the stable version answered and the request falls in the compared percentage."""
        out = []
        if self.shadow is not None and random.random() * 100 < self.shadow_percent:
            out.append(self.shadow)
        if (
            answered is self.stable
            and self.canary is not None
            and self.canary_compare_percent
            and random.random() * 100 < self.canary_compare_percent
        ):
            out.append(self.canary)
        return out


def compile_table(table: RouteTable, known: dict[tuple[str, str, str], Target]) -> dict[str, Route]:
    """Routes for the request path, reusing the Targets (readiness, schemas) of the previous table."""
    import numpy as np  # here, not at the top: the operators import this module for its types, not for numpy

    routes: dict[str, Route] = {}
    for name, spec in table.models.items():
        targets: dict[str, Target] = {}
        by_role: dict[str, tuple[Target, VersionRoute]] = {}
        for v in spec.versions:
            fresh = Target(name, v.version, v.url.rstrip("/"), v.triton_model or name, v.role)
            target = known.get(fresh.key, fresh)
            target.role = v.role
            target.place(fresh.url, tuple(u.rstrip("/") for u in v.endpoints or ()))
            targets[v.version] = target
            by_role[v.role] = (target, v)
        orders = {v.version: v.feature_order for v in spec.versions if spec.features and v.feature_order is not None}
        lookup = tuple(dict.fromkeys(f for order in orders.values() for f in order))
        for v in spec.versions:
            target = targets[v.version]
            target.task = (v.drift.task if v.drift is not None else None) or spec.task
            target.classes = tuple(v.drift.classes) if v.drift is not None and v.drift.classes else None
            names = v.drift.features if v.drift is not None else v.feature_order
            target.features = tuple(names) if names else None
        for version, target in targets.items():
            order = orders.get(version)
            target.columns = None if order is None else np.array([lookup.index(f) for f in order], dtype=np.intp)
        stable, stable_spec = by_role["stable"]
        canary, canary_spec = by_role.get("canary", (None, None))
        shadow, shadow_spec = by_role.get("shadow", (None, None))
        canary_weight = canary_spec.weight if canary_spec else 0
        routes[name] = Route(
            name=name,
            spec=spec,
            stable=stable,
            canary=canary,
            shadow=shadow,
            canary_weight=canary_weight,
            total_weight=stable_spec.weight + canary_weight,
            shadow_percent=shadow_spec.percent if shadow_spec else 0,
            canary_compare_percent=canary_spec.percent if canary_spec else 0,
            sticky_header=spec.sticky_header.lower() if spec.sticky_header else None,
            timeout=spec.timeout_ms / 1000,
            versions=targets,
            features=spec.features,
            lookup=lookup,
        )
    return routes

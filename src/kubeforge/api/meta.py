"""Shared building blocks of the kubeforge API: the base model, conditions, value types.

Every API type derives from :class:`KubeModel`, which gives the wire format users write
(camelCase keys, unknown keys rejected) and makes attribute docstrings the field
descriptions that ``kubectl explain`` prints: the docstring is the documentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubeforge.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "kubeforge.dev/v1alpha1"  # GROUP/VERSION as a literal: Resource.api_version's one value
CATEGORY = "kubeforge"


class KubeModel(BaseModel):
    """Base of every kubeforge API type."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written to the API server: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# Schema extra for a list whose items must be unique: the API server rejects duplicates.
LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def _unique(items: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    dupes = []
    for x in items:
        if x in seen:
            dupes.append(x)
        seen.add(x)
    if dupes:
        raise ValueError(f"duplicate entries {sorted(set(dupes))!r}: list each one once")
    return items


UniqueNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=256)]],
    AfterValidator(_unique),
    Field(json_schema_extra=LIST_SET),
]


def exactly_one_of(*fields: str) -> ConfigDict:
    """Model config making the API server require exactly one of the given (camelCase) fields."""
    return ConfigDict(json_schema_extra={"oneOf": [{"required": [f]} for f in fields]})


# Go-style duration, as Kubernetes users write them: "30s", "5m", "1h30m", "250ms".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32, json_schema_extra={"example": "30s"}),
]


def duration_seconds(duration: str) -> float:
    """A Go-style duration ("1m30s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", duration))


# Kubernetes resource quantity ("500m", "2", "4Gi"); integers are accepted as well.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    int | Annotated[str, Field(pattern=QUANTITY_PATTERN)],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]

# DNS-1123 label: names of Kubernetes objects kubeforge refers to or creates.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ObjectName = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]

# Names in MLflow's model registry and Feast: letters, digits, '.', '_' and '-'.
REGISTRY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RegistryName = Annotated[str, Field(pattern=REGISTRY_NAME_PATTERN, min_length=1, max_length=128)]

# Column / feature names as they appear in datasets.
ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class SecretKeyRef(KubeModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName
    """Secret name."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", min_length=1, max_length=253)] = "token"
    """Key in the Secret whose value is used."""


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata kubeforge reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """One aspect of the resource's state, in the shape of metav1.Condition (kstatus reads it)."""

    type: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)]
    """Kind of condition, e.g. Ready, Progressing, Degraded."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    """One CamelCase word that a program can switch on, e.g. InvalidSpec, JobFailed."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened and, when something is wrong, what to do about it."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        }
    ),
]


class FailureInfo(KubeModel):
    """The last thing that went wrong; for a failing pod, which container, how it ended and why."""

    reason: str
    """CamelCase reason: the operator's (e.g. ModelNotFound, AnalysisFailed) or the pod's as the kubelet reports
    it (e.g. CrashLoopBackOff, Error, OOMKilled, ImagePullBackOff, Unschedulable)."""
    message: str
    """What happened and what to do; for a container, the line of its termination message (the tail of its log)
    that says what went wrong."""
    time: str | None = None
    """When (RFC 3339)."""
    pod: str | None = None
    """The failing pod, for `kubectl logs` and `kubectl describe pod`."""
    container: str | None = None
    """The failing container of that pod (an init container's name when the pod did not get past it)."""
    exit_code: int | None = None
    """Exit code of the container's last run (137 for a kill, e.g. out of memory); empty when it never ran."""


class Toleration(KubeModel):
    """A pod toleration passed through to the pods kubeforge creates (see core/v1 Toleration)."""

    key: str | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal needs `value` to match the taint's value."""
    value: str | None = None
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumn of the CRD: what `kubectl get` shows."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CRDInfo:
    """Everything about a kind's CRD that is not its schema."""

    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def ready_column() -> PrinterColumn:
    return PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready condition")


def reason_column() -> PrinterColumn:
    return PrinterColumn(
        "Reason", '.status.conditions[?(@.type=="Ready")].reason', description="Why Ready is what it is", priority=1
    )


def age_column() -> PrinterColumn:
    return PrinterColumn("Age", ".metadata.creationTimestamp", "date")


class Resource(KubeModel):
    """Base of the three top-level kinds."""

    crd: ClassVar[CRDInfo]

    api_version: Literal["kubeforge.dev/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

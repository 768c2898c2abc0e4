"""spec.retrain: decide when a ModelDeployment's model is retrained, and create that TrainingJob exactly once.

Each pass reads what the triggers watch (the stable version's drift and live accuracy, from the
gateway's /metrics; the clock, for a schedule) and the retrain TrainingJobs that exist, labelled
with the deployment they retrain. Everything the decision needs beyond "since when has the trigger
held" comes from those objects, not from memory or status, so a restarted operator decides the same:

- A TrainingJob's name is the deployment's name and the start of its trigger window (the cooldown
  period the trigger fired in, or the scheduled time), so an operator killed between deciding and
  creating, or a second replica, creates the same name and the API server refuses the second.
- At most one retrain runs at a time; a new one waits for the cooldown after the last one started.
- A retrain whose TrainingJob failed stops further retrains until someone deletes that TrainingJob:
  the condition and an alert say so, and nothing retries in a loop.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from croniter import croniter

from ...api.meta import duration_seconds
from ...api.retrain import Retrain
from ...api.trainingjob import RETRAIN_OF_LABEL as RETRAIN_OF
from ...api.trainingjob import RETRAIN_TRIGGER_LABEL as TRIGGER
from ...core import feedbackset
from ...core.conditions import FALSE, TRUE, parse_rfc3339, rfc3339
from ...core.kube import owner_reference
from .. import labels

VALUE = "kubeforge.dev/retrain-value"
"""Annotation: what the trigger measured when it fired."""

CONDITION = "Retraining"
STARTED, RUNNING, SUCCEEDED, FAILED = "RetrainStarted", "RetrainRunning", "RetrainSucceeded", "RetrainFailed"
WATCHING, HOLDING, COOLING_DOWN = "Watching", "TriggerHolding", "CoolingDown"
TEMPLATE_NOT_FOUND = "TemplateNotFound"

_STAMP = "%Y%m%d%H%M%S"
_NAME_ROOM = 63 - len("-retrain-") - len("20260101000000") - len("-a99")
"""A retrain's name leaves room for the trainer's Job name (<name>-a<attempt>), which is a label value."""


@dataclass(frozen=True)
class RetrainJob:
    """A retrain TrainingJob as found in the cluster."""

    name: str
    trigger: str
    value: float | None
    created: datetime
    phase: str | None
    message: str
    version: str | None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def of(cls, obj: dict[str, Any]) -> RetrainJob:
        meta, status = obj["metadata"], obj.get("status") or {}
        value = (meta.get("annotations") or {}).get(VALUE)
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        return cls(
            name=meta["name"],
            trigger=(meta.get("labels") or {}).get(TRIGGER, ""),
            value=float(value) if value else None,
            created=parse_rfc3339(meta["creationTimestamp"]) or datetime.now(UTC),
            phase=status.get("phase"),
            message=ready.get("message", ""),
            version=(status.get("mlflow") or {}).get("modelVersion"),
        )


@dataclass(frozen=True)
class Observation:
    """What the triggers watch, as the gateway reports it now (None: not reported, e.g. too few samples)."""

    psi: float | None = None
    psi_feature: str | None = None
    accuracy: float | None = None


@dataclass
class Decision:
    """What one pass decided: a TrainingJob to create (with why), the condition, and events."""

    create: tuple[str, str, float | None] | None = None  # name, trigger, value
    condition: tuple[str, str, str] = (FALSE, WATCHING, "")
    events: list[tuple[str, str, str]] = field(default_factory=list)
    holding: dict[str, datetime] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.condition[1] == FAILED


def retrain_name(deployment: str, window: datetime) -> str:
    """The TrainingJob of the retrain of deployment in the trigger window starting at window."""
    base = deployment
    if len(base) > _NAME_ROOM:
        base = base[: _NAME_ROOM - 7].rstrip("-") + "-" + hashlib.sha1(deployment.encode()).hexdigest()[:6]
    return f"{base}-retrain-{window.astimezone(UTC).strftime(_STAMP)}"


def _window(now: datetime, cooldown: float) -> datetime:
    """Start of the cooldown period now falls in, counted from the epoch: the same for every replica."""
    epoch = now.timestamp()
    return datetime.fromtimestamp(math.floor(epoch / cooldown) * cooldown, UTC)


def decide(
    deployment: str,
    retrain: Retrain,
    now: datetime,
    created: datetime,
    observed: Observation,
    holding: dict[str, datetime],
    jobs: list[RetrainJob],
    previous: datetime | None = None,
) -> Decision:
    """The pure decision. holding maps a trigger to since when it holds (kept by the caller between passes);
    created is when the deployment was created (no scheduled time before it counts); previous is when the last
    retrain status.lastRetrain records started, which still counts for the cooldown once its TrainingJob is gone."""
    triggers, cooldown = retrain.triggers, duration_seconds(retrain.cooldown)
    d = Decision()
    if triggers.drift and observed.psi is not None and observed.psi > triggers.drift.psi:
        d.holding["drift"] = holding.get("drift", now)
    if triggers.accuracy and observed.accuracy is not None and observed.accuracy < triggers.accuracy.below:
        d.holding["accuracy"] = holding.get("accuracy", now)
    last = max(jobs, key=lambda j: j.created, default=None)
    if last is not None and not last.finished:
        d.condition = (TRUE, RUNNING, f"TrainingJob {last.name} is training ({_why(last)})")
        return d
    if last is not None and last.phase == "Failed":
        d.condition = (
            FALSE,
            FAILED,
            f"TrainingJob {last.name} ({_why(last)}) failed: {last.message or 'see its status'}. No retrain starts "
            f"while it exists: fix the cause, then `kubectl delete trainingjob {last.name}`",
        )
        return d

    fired: list[tuple[str, float | None, datetime]] = []  # trigger, value, window start
    window = _window(now, cooldown)
    for name, hold in (("drift", triggers.drift), ("accuracy", triggers.accuracy)):
        since = d.holding.get(name)
        if hold is not None and since is not None and (now - since).total_seconds() >= duration_seconds(hold.hold):
            fired.append((name, observed.psi if name == "drift" else observed.accuracy, window))
    started = max([t for t in (previous, last.created if last else None) if t is not None], default=None)
    if triggers.schedule:
        due = croniter(triggers.schedule, now).get_prev(datetime)
        if due > max(created, started or created):
            fired.append(("schedule", None, due))
    if fired and started is not None and (now - started).total_seconds() < cooldown:
        until = rfc3339(started + timedelta(seconds=cooldown))
        d.condition = (
            FALSE,
            COOLING_DOWN,
            f"{fired[0][0]} holds; the last retrain started less than "
            f"{retrain.cooldown} ago, the next may start at {until}",
        )
        return d
    if fired:
        trigger, value, start = fired[0]
        d.create = (retrain_name(deployment, start), trigger, value)
        message = f"{_trigger_text(trigger, value, observed, retrain)}: created TrainingJob {d.create[0]}"
        d.condition = (TRUE, STARTED, message)
        d.events.append(("Normal", STARTED, message))
        return d
    if d.holding:
        name, since = min(d.holding.items(), key=lambda kv: kv[1])
        d.condition = (
            FALSE,
            HOLDING,
            f"{name} holds since {rfc3339(since)}; a retrain starts if it still holds "
            f"after {getattr(triggers, name).hold}",
        )
        return d
    if last is not None and last.phase == "Succeeded":
        d.condition = (FALSE, SUCCEEDED, f"TrainingJob {last.name} ({_why(last)}) registered version {last.version}")
        return d
    d.condition = (FALSE, WATCHING, f"no trigger holds ({_watched(retrain)})")
    return d


def _why(job: RetrainJob) -> str:
    return job.trigger if job.value is None else f"{job.trigger} {job.value:.3g}"


def _trigger_text(trigger: str, value: float | None, observed: Observation, retrain: Retrain) -> str:
    t = retrain.triggers
    if trigger == "drift" and t.drift:
        return f"drift: PSI of {observed.psi_feature} {value:.3g} > {t.drift.psi:g} for {t.drift.hold}"
    if trigger == "accuracy" and t.accuracy:
        return f"accuracy: live accuracy {value:.3g} < {t.accuracy.below:g} for {t.accuracy.hold}"
    return f"schedule {t.schedule}"


def _watched(retrain: Retrain) -> str:
    t, parts = retrain.triggers, []
    if t.drift:
        parts.append(f"drift: PSI > {t.drift.psi:g} for {t.drift.hold}")
    if t.accuracy:
        parts.append(f"accuracy < {t.accuracy.below:g} for {t.accuracy.hold}")
    if t.schedule:
        parts.append(f"schedule {t.schedule}")
    return "; ".join(parts)


def training_job(
    owner: dict[str, Any],
    retrain: Retrain,
    template: dict[str, Any],
    create: tuple[str, str, float | None],
    gateway_url: str | None,
) -> dict[str, Any]:
    """The retrain's TrainingJob: the template's spec (wire form) with the retrain's dataset, owned by the
    deployment (it goes with it) and labelled with it and the trigger."""
    name, trigger, value = create
    spec = copy.deepcopy(template)
    dataset = retrain.dataset
    if dataset is not None:
        source = spec.setdefault("dataset", {})
        source.pop("uri", None)
        source.pop("featureView", None)
        source.pop("format", None)
        if dataset.uri is not None:
            source["uri"] = dataset.uri
        elif dataset.feature_view is not None:
            source["featureView"] = dataset.feature_view.to_wire()
        elif dataset.from_feedback is not None:
            query = urlencode(
                {
                    "since": dataset.from_feedback.since,
                    "target": source.get("target", "label"),
                    **({"features": ",".join(source["features"])} if source.get("features") else {}),
                }
            )
            model = owner["metadata"]["name"]
            source["uri"] = f"{(gateway_url or '').rstrip('/')}{feedbackset.path(model)}?{query}"
            source["format"] = "csv"
            source.pop("tokenSecretRef", None)  # the template's was for its own data
            if (token := dataset.from_feedback.token_secret_ref) is not None:
                source["tokenSecretRef"] = token.to_wire()
    meta = owner["metadata"]
    annotations = {VALUE: f"{value:.6g}"} if value is not None else {}
    return {
        "apiVersion": owner["apiVersion"],
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {labels.PART_OF: "kubeforge", RETRAIN_OF: meta["name"], TRIGGER: trigger},
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def record(job: RetrainJob) -> dict[str, Any]:
    """status.lastRetrain from the newest retrain TrainingJob."""
    out: dict[str, Any] = {"trigger": job.trigger, "time": rfc3339(job.created), "trainingJob": job.name}
    if job.value is not None:
        out["value"] = job.value
    if job.phase:
        out["phase"] = job.phase
    if job.version:
        out["modelVersion"] = job.version
    return out


PSI, LIVE_ACCURACY = "kubeforge_drift_psi", "kubeforge_live_accuracy"
"""The gateway's gauges the drift and accuracy triggers read."""


def observe(text: str | None, model: str, version: str | None) -> Observation:
    """The stable version's largest feature PSI and its live accuracy, from a scrape of the gateway."""
    from prometheus_client.parser import text_string_to_metric_families

    if not text or not version:
        return Observation()
    psi, feature, accuracy = None, None, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model or sample.labels.get("version") != version:
                continue
            if sample.name == PSI and (psi is None or sample.value > psi):
                psi, feature = sample.value, sample.labels.get("feature")
            elif sample.name == LIVE_ACCURACY:
                accuracy = sample.value if accuracy is None else min(accuracy, sample.value)
    return Observation(psi, feature, accuracy)

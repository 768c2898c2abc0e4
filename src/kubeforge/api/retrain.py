"""ModelDeployment.spec.retrain: when the serving model drifts, loses accuracy or is due, train a new one.

The operator creates one TrainingJob from the template per trigger window; with the template's
``register.alias`` set to the alias the deployment's canary follows, the new version rolls out
through the metric-gated canary by itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from .meta import Duration, KubeModel, ObjectName, SecretKeyRef, exactly_one_of
from .trainingjob import FeatureViewSource, TrainingJobSpec

Trigger = Literal["drift", "accuracy", "schedule"]


class DriftTrigger(KubeModel):
    """Retrain when the stable version's inputs drift from its training data."""

    psi: Annotated[float, Field(gt=0, le=10)] = 0.2
    """PSI of any input feature of the stable version (at the gateway) above which the trigger holds."""
    hold: Duration = Field("10m", alias="for")
    """How long the PSI must stay above before a retrain starts."""


class AccuracyTrigger(KubeModel):
    """Retrain when the stable version's live accuracy (from labels fed back to the gateway) drops."""

    below: Annotated[float, Field(gt=0, le=1)]
    """Live accuracy under which the trigger holds."""
    hold: Duration = Field("10m", alias="for")
    """How long accuracy must stay below before a retrain starts."""


class RetrainTriggers(KubeModel):
    """What starts a retrain; any one that holds does."""

    drift: DriftTrigger | None = None
    """Input drift of the stable version."""
    accuracy: AccuracyTrigger | None = None
    """Live accuracy of the stable version."""
    schedule: Annotated[str, Field(min_length=9, max_length=128)] | None = None
    """Cron expression in UTC ("0 3 * * 1": Mondays at 03:00; a sixth field adds seconds): retrain at those times
    whatever the metrics say."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression: minute hour day month weekday [second]")
        return value

    @model_validator(mode="after")
    def _some(self) -> RetrainTriggers:
        if self.drift is None and self.accuracy is None and self.schedule is None:
            raise ValueError("set at least one of drift, accuracy or schedule")
        return self


class RetrainTemplate(KubeModel):
    """The TrainingJob a retrain creates: copied from an existing one, or written out here."""

    model_config = exactly_one_of("name", "spec")

    name: ObjectName | None = None
    """A TrainingJob in the same namespace whose spec each retrain copies."""
    spec: TrainingJobSpec | None = None
    """The spec of each retrain's TrainingJob."""

    @model_validator(mode="after")
    def _one(self) -> RetrainTemplate:
        if (self.name is None) == (self.spec is None):
            raise ValueError("set exactly one of trainingJob.name (a TrainingJob to copy) or trainingJob.spec")
        return self


class FeedbackDataset(KubeModel):
    """Train on the requests the deployment answered that got labels fed back (payload log and feedback)."""

    since: Duration = "24h"
    """How far back labelled requests are taken."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding one of the gateway's bearer tokens, which the retrain's trainer sends to read the data set;
    required when the deployment has spec.auth."""


class RetrainDataset(KubeModel):
    """The data a retrain learns from, instead of the template's dataset (its target and features stay)."""

    model_config = exactly_one_of("fromFeedback", "uri", "featureView")

    from_feedback: FeedbackDataset | None = None
    """Recent labelled traffic, read from the gateway (needs spec.monitoring.payloadLog and feedback)."""
    uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    """A file or fsspec URI with fresh data."""
    feature_view: FeatureViewSource | None = None
    """A FeatureView and the entities (with labels) to join it with."""

    @model_validator(mode="after")
    def _one(self) -> RetrainDataset:
        if sum(x is not None for x in (self.from_feedback, self.uri, self.feature_view)) != 1:
            raise ValueError("set exactly one of dataset.fromFeedback, dataset.uri or dataset.featureView")
        return self


class Retrain(KubeModel):
    """Retrain the model when a trigger holds, at most once per cooldown and one at a time."""

    training_job: RetrainTemplate
    """What each retrain runs."""
    triggers: RetrainTriggers
    """When to retrain."""
    cooldown: Duration = "1h"
    """Least time between the start of two retrains."""
    dataset: RetrainDataset | None = None
    """Data to learn from instead of the template's."""


class RetrainRecord(KubeModel):
    """The last retrain the operator started."""

    trigger: Trigger
    """drift, accuracy or schedule."""
    value: float | None = None
    """What the trigger measured (PSI, accuracy); empty for a schedule."""
    time: str
    """When it started (RFC 3339)."""
    training_job: str
    """The TrainingJob it created."""
    phase: str | None = None
    """That TrainingJob's phase as last seen."""
    model_version: str | None = None
    """The version it registered, once it succeeded."""

"""The model card of a registered version: what it is, what it learned from, how well it did, and who may use it.

The trainer writes the card when it registers a version, as two artifacts of the run
(:data:`CARD_JSON` for programs, :data:`CARD_MARKDOWN` for people) and as the version's
description, which the MLflow UI renders on the version's page. Everything in it is known
at training time except the approval, which changes later: the card records the state at
registration and ``kubeforge model card`` shows the registry's current one.
``kubeforge model import`` writes one too, saying what kubeforge saw: the file, its reference
data, no training and no metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from . import approval
from . import modelcontract as contract

if TYPE_CHECKING:
    import numpy as np

CARD_JSON = "card/model_card.json"
CARD_MARKDOWN = "card/model_card.md"


class FeatureSummary(BaseModel):
    """One input feature as the training rows had it (the drift baseline's statistics); an imported version
    without reference data has its names only."""

    name: str
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


class ClassMetrics(BaseModel):
    """Validation metrics of one class of a classifier."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


class Dataset(BaseModel):
    """Where the training data came from, and which bytes exactly."""

    uri: str
    sha256: str
    rows: int
    train_rows: int
    validation_rows: int
    feature_view: str | None = None
    feature_view_generation: str | None = None
    rows_left_out: int = Field(
        default=0, description="labelled rows a feedback data set left out: answered by versions without its features"
    )


class Training(BaseModel):
    """How the version was trained."""

    training_job: str = Field(description="namespace/name of the TrainingJob; empty when run by hand")
    run_id: str = ""
    attempt: int = 1
    seconds: float = 0.0
    code_version: str = ""


class Origin(BaseModel):
    """The file an imported version came from, and the data it was checked on."""

    file: str
    sha256: str
    format: str = Field(description="what the file held, as the import read it")
    reference_data: Dataset | None = Field(
        default=None, description="the --reference-data rows (none held out: nothing is trained on them)"
    )


class Approval(BaseModel):
    """Who approved or rejected the version, when and why; state None while nobody decided."""

    state: str | None = None
    by: str = ""
    at: str = ""
    note: str = ""


class ModelCard(BaseModel):
    """Everything the card says, as stored in CARD_JSON."""

    model: str
    version: str = ""
    task: str
    framework: str
    model_class: str = Field(description="the architecture, entrypoint or estimator")
    features: list[FeatureSummary]
    classes: list[str] = Field(default_factory=list)
    dataset: Dataset | None = Field(default=None, description="the training data; None for an imported version")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    per_class: list[ClassMetrics] = Field(default_factory=list)
    training: Training | None = Field(default=None, description="None for an imported version")
    imported: Origin | None = Field(default=None, description="set for a version `kubeforge model import` made")
    intended_use: str | None = None
    limitations: str | None = None
    approval: Approval = Field(default_factory=Approval)

    def with_approval(self, tags: dict[str, str]) -> ModelCard:
        """The card with the approval recorded in a version's tags now."""
        now = approval.Approval.of(tags)
        return self.model_copy(update={"approval": Approval(state=now.state, by=now.by, at=now.at, note=now.note)})


def features(baseline: contract.Baseline) -> list[FeatureSummary]:
    return [
        FeatureSummary(name=f.name, mean=f.mean, std=f.std, min=f.edges[0], max=f.edges[-1]) for f in baseline.features
    ]


def per_class(probabilities: np.ndarray, truth: np.ndarray, classes: list[Any]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of each class, from a classifier's probabilities on the validation rows."""
    import numpy as np  # here: the CLI imports this module for every command; only training calls this
    from sklearn.metrics import precision_recall_fscore_support

    predicted = np.asarray(probabilities).argmax(axis=1)
    scores = precision_recall_fscore_support(
        np.asarray(truth).astype(np.int64), predicted, labels=list(range(len(classes))), zero_division=0
    )
    return [
        ClassMetrics(label=str(label), precision=p, recall=r, f1=f, support=int(n))
        for label, p, r, f, n in zip(classes, *scores, strict=True)
    ]


def markdown(card: ModelCard) -> str:
    """The card for people: the MLflow UI renders it as the version's description."""
    title = f"# {card.model}" + (f" version {card.version}" if card.version else "")
    state = approval.Approval(card.approval.state, card.approval.by, card.approval.at, card.approval.note)
    ask = (
        "pass `--{}` to `kubeforge model import`"
        if card.imported
        else "annotate the TrainingJob with `kubeforge.dev/{}`"
    )
    lines = [
        title,
        "",
        f"A {card.framework} {card.task} model ({card.model_class}) on {len(card.features)} features.",
        "",
        f"**Approval:** {state.describe()}",
        "",
        "## Intended use",
        "",
        card.intended_use or f"Not stated ({ask.format('intended-use')}).",
        "",
        "## Limitations",
        "",
        card.limitations or f"Not stated ({ask.format('limitations')}).",
        "",
        "## Validation metrics",
        "",
    ]
    if card.metrics:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in card.metrics.items())]
    else:
        lines.append("None: kubeforge did not train this version, and checked it against the model contract only.")
    if card.per_class:
        lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {c.label} | {c.precision:.4f} | {c.recall:.4f} | {c.f1:.4f} | {c.support} |" for c in card.per_class
        ]
    if card.imported is not None:
        lines += _origin(card.imported)
    if card.dataset is not None:
        data = card.dataset
        source = (
            f"FeatureView {data.feature_view} (generation {data.feature_view_generation}), entities "
            if (data.feature_view)
            else ""
        )
        lines += [
            "",
            "## Data",
            "",
            f"- source: {source}`{data.uri}`",
            f"- sha256: `{data.sha256}`",
            f"- rows: {data.rows} ({data.train_rows} training, {data.validation_rows} validation)",
        ]
        if data.rows_left_out:
            lines.append(f"- left out: {data.rows_left_out} labelled rows answered by versions without its features")
    lines += ["", "| feature | mean | std | min | max |", "|---|---|---|---|---|"]
    lines += [f"| {f.name} | {_num(f.mean)} | {_num(f.std)} | {_num(f.min)} | {_num(f.max)} |" for f in card.features]
    if card.training is not None:
        lines += [
            "",
            "## Training",
            "",
            f"- TrainingJob: {card.training.training_job or 'none (trained by hand)'}",
            f"- MLflow run: `{card.training.run_id}`",
            f"- attempt {card.training.attempt}, {card.training.seconds:.1f} s",
            f"- kubeforge {card.training.code_version}",
            "",
            "| hyperparameter | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in card.hyperparameters.items()),
        ]
    return "\n".join(lines) + "\n"


def _origin(origin: Origin) -> list[str]:
    reference = origin.reference_data
    checked = (
        f"- reference data: `{reference.uri}` (sha256 `{reference.sha256}`, {reference.rows} rows): the model ran on "
        "them and the drift baseline below is theirs"
        if reference
        else "- reference data: none, so no drift baseline (drift is not monitored for this version)"
    )
    return [
        "",
        "## Origin",
        "",
        f"- imported from `{origin.file}` ({origin.format}), sha256 `{origin.sha256}`",
        checked,
    ]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"

"""Delayed labels: joined to the answers they label by request id, turned into live model quality.

Every answer carries a request id (``kubeforge-request-id``). For a model whose route has
``feedback``, the gateway remembers every answered request (not a sample) in a
:class:`JoinStore`: request id -> the version and role that answered, when, and its prediction
(the argmax class index of each row for classification, the value for regression). The store is
bounded: at most ``maxPending`` entries (the oldest are forgotten first and counted in
``kubeforge_feedback_evicted_total``), none older than ``ttl``. Ids forgotten for their age are
remembered, without their answers, for as many again, so a late label reads as ``expired``
rather than ``unknown``.

The request path only adds an entry holding a reference to the answer's bytes; a task decodes
the predictions after the responses went out, a batch at a time (as drift does), and drops the
bytes. A label for an entry not decoded yet decodes it then.

``POST /v2/models/{name}/feedback`` takes ``{"labels": [{"id": ..., "label": ...}, ...]}`` (or the
bare list). The batch is checked whole before anything is applied: an error names the field
(``labels[3].label``) and what to send instead, never a value the caller sent. A label is the
class as the version was trained on it (``"setosa"``, ``1``), or, when it is not one of the
version's classes, its class index; for regression a number; for a request of several rows a
list with one label per row. A joined entry leaves the store: each answer is labelled once.

Joined labels feed a sliding window per model, version and role (a ring of time buckets, so its
memory is fixed whatever the label rate): ``kubeforge_live_accuracy`` or ``kubeforge_live_mae``
and ``kubeforge_live_rmse`` are exported once it holds ``minLabels`` labelled rows, and
``kubeforge_live_labels`` always. With a payload log the joined labels are also written to
``<model>.labels.jsonl`` beside the payload records, and :func:`dataset` joins the two into a
CSV a TrainingJob can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from kubeforge.api.meta import DURATION_PATTERN, duration_seconds
from kubeforge.api.modeldeployment import FeedbackMonitoring
from kubeforge.core.modelcontract import INPUT_NAME, OUTPUT_NAME
from kubeforge.monitoring.window import SlidingCounts

from .metrics import FEEDBACK_EVICTED, FEEDBACK_LABELS
from .oip import Body, headers, tensors
from .payloads import logged_features
from .routes import Route, Target

log = logging.getLogger(__name__)

MAX_LABELS = 10_000
"""Labels one POST may carry."""
BUCKETS = 60
"""Time buckets of a quality window: it covers between 59/60 and all of the window."""
DECODE_BATCH = 256
"""Answers decoded at once, between which the event loop serves others."""
DECODE_QUEUE = 65_536
"""Answers waiting to be decoded at most; more are decoded when their label arrives."""
DECODE_INTERVAL = 1.0
"""Seconds at most between decoding what is queued."""
EVENT_TIMESTAMP = "event_timestamp"
RESULTS = ("joined", "unknown", "expired")
"""What becomes of a label: it joins an answer, no answer with its id is remembered, or it came too late."""


class BadFeedback(ValueError):
    """A feedback or dataset request the gateway refuses: 400 (malformed), 413 (too many) or 422 (a label that does
    not fit the version it labels)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(slots=True, eq=False)
class Answered:
    """One answered request, as the join store remembers it."""

    version: str
    role: str
    task: str
    classes: tuple[str, ...] | None
    time: float
    """Wall-clock time of the answer."""
    tick: float
    """The store's clock at the answer (monotonic): what the ttl is measured on."""
    answer: Body | None
    """The answer's bytes until they are decoded."""
    prediction: np.ndarray | None = None
    """Per row: the class index (argmax) or the value."""
    width: int = 0
    """Outputs per row (for classification: how many classes the answer scores)."""
    error: str | None = None
    """Why the answer could not be read, when it could not."""


class JoinStore:
    """Answered requests of one model by request id, oldest first: at most max_pending, none older than ttl_s."""

    def __init__(self, model: str, max_pending: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self.clock = clock
        self.entries: OrderedDict[str, Answered] = OrderedDict()
        self.expired: OrderedDict[str, None] = OrderedDict()
        self._evicted = FEEDBACK_EVICTED.labels(model)

    def add(self, request_id: str, entry: Answered) -> None:
        """Remember entry (replacing an earlier answer with the same id); forget what is too old or too many."""
        entries = self.entries
        if request_id in entries:
            del entries[request_id]
        entries[request_id] = entry
        self.expire(entry.tick)
        while len(entries) > self.max_pending:
            entries.popitem(last=False)
            self._evicted.inc()

    def expire(self, now: float) -> None:
        """Forget the entries older than the ttl, keeping their ids (bounded) to tell late labels apart."""
        entries, limit = self.entries, now - self.ttl_s
        while entries:
            request_id = next(iter(entries))
            if entries[request_id].tick >= limit:
                break
            del entries[request_id]
            self.expired[request_id] = None
            if len(self.expired) > self.max_pending:
                self.expired.popitem(last=False)

    def find(self, request_id: str) -> tuple[str, Answered | None]:
        """("joined", the entry), ("expired", None) or ("unknown", None); nothing is removed."""
        entry = self.entries.get(request_id)
        if entry is not None:
            if entry.tick >= self.clock() - self.ttl_s:
                return "joined", entry
            return "expired", None
        return ("expired" if request_id in self.expired else "unknown"), None

    def take(self, request_id: str, entry: Answered) -> bool:
        """Remove entry, found earlier under request_id: an answer is labelled once. False when it is no longer
        here (a batch checked at the same time took it first, or it expired or was replaced since)."""
        if self.entries.get(request_id) is not entry:
            return False
        del self.entries[request_id]
        return True


def decode(entries: list[Answered]) -> None:
    """Read the predictions of entries' answers (one JSON parse for all headers) and drop the answers' bytes."""
    todo = [e for e in entries if e.answer is not None]
    bodies: list[Body] = [e.answer for e in todo]  # type: ignore[misc]
    for entry, body, header in zip(todo, bodies, headers(bodies), strict=True):
        entry.answer = None
        try:
            if isinstance(header, Exception):
                raise header
            outputs = header.get("outputs") or []
            names = [o["name"] for o in outputs]
            if not names:
                raise ValueError("the answer has no outputs")
            name = OUTPUT_NAME if OUTPUT_NAME in names else names[0]
            values = tensors(*body, "outputs", name.__eq__, header)[name]
            rows = values.shape[0] if values.ndim else 1
            matrix = values.reshape(rows, -1)
            entry.width = matrix.shape[1]
            if entry.task == "classification":
                entry.prediction = matrix.argmax(axis=1).astype(np.int64)
            else:
                entry.prediction = matrix[:, 0].astype(np.float64)
        except Exception as err:  # an answer that cannot be read cannot be labelled; the request was served
            entry.error = f"{type(err).__name__}: {err}"


class Quality:
    """Labelled predictions of one version and role over a sliding window: [rows, right] for classification,
    [rows, sum of absolute errors, sum of squared errors] for regression."""

    def __init__(self, task: str, window_s: float, clock: Callable[[], float], fingerprint: str):
        self.task = task
        self.fingerprint = fingerprint
        classification = task == "classification"
        self.counts = SlidingCounts(
            2 if classification else 3, window_s, BUCKETS, clock, np.int64 if classification else np.float64
        )

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        if self.task == "classification":
            self.counts.add(np.array([len(truth), int((prediction == truth).sum())], dtype=np.int64))
        else:
            error = prediction - truth
            self.counts.add(np.array([len(truth), np.abs(error).sum(), (error * error).sum()], dtype=np.float64))


# --- checking a batch of labels ----------------------------------------------------------------

USAGE = 'send {"labels": [{"id": "<kubeforge-request-id of the answer>", "label": <label>}, ...]}'


def parse(payload: bytes) -> tuple[list[tuple[str, Any]], list[int] | None]:
    """(id, label) of every item of a feedback body; raises BadFeedback naming the first field at fault. And the
    items' places in the batch the caller sent, where a gateway replica passes part of a batch on to a peer
    (``positions``, one per item; None otherwise)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise BadFeedback(f"the body is not JSON: {USAGE}") from None
    items = body.get("labels") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise BadFeedback(f"labels is missing or not a list: {USAGE}")
    if len(items) > MAX_LABELS:
        raise BadFeedback(f"{len(items)} labels in one request, more than {MAX_LABELS}: send them in batches", 413)
    out = []
    for i, item in enumerate(items):
        where = f"labels[{i}]"
        if not isinstance(item, dict):
            raise BadFeedback(f'{where} is not an object: each label is {{"id": ..., "label": ...}}')
        request_id = item.get("id")
        if request_id is None or request_id == "":
            raise BadFeedback(f"{where}.id is missing: give the request id the answer carried in kubeforge-request-id")
        if not isinstance(request_id, str):
            raise BadFeedback(f"{where}.id is not a string: give the kubeforge-request-id of the answer as text")
        if "label" not in item:
            raise BadFeedback(f"{where}.label is missing: give the class (or class index), or the value for regression")
        label = item["label"]
        values = label if isinstance(label, list) else [label]
        if not values or not all(_scalar(v) for v in values):
            raise BadFeedback(
                f"{where}.label has the wrong type: give a class label, a class index or a number, or a list of them "
                "with one per row of the request"
            )
        out.append((request_id, label))
    positions = body.get("positions") if isinstance(body, dict) else None
    valid = isinstance(positions, list) and len(positions) == len(out) and all(type(p) is int for p in positions)
    return out, positions if valid else None


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int)  # bool is an int


def truth(where: str, label: Any, entry: Answered) -> tuple[np.ndarray, Any]:
    """The label as the window compares it with the entry's prediction (class indices or values), and as it is
    written for training (the class as trained, or the value); raises BadFeedback (422) when it does not fit."""
    assert entry.prediction is not None
    rows = len(entry.prediction)
    values = label if isinstance(label, list) else [label]
    if len(values) != rows:
        raise BadFeedback(
            f"{where}.label: the request had {rows} rows, so send a list of {rows} labels, one per row", 422
        )
    if entry.task == "regression":
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise BadFeedback(f"{where}.label must be a number: version {entry.version} is a regression model", 422)
        numbers = [float(v) for v in values]
        return np.array(numbers), numbers[0] if rows == 1 and not isinstance(label, list) else numbers
    indices = [_class_index(where, v, entry) for v in values]
    written = [_as_trained(entry.classes[i]) if entry.classes else i for i in indices]
    return np.array(indices, dtype=np.int64), written[0] if rows == 1 and not isinstance(label, list) else written


def _class_index(where: str, value: Any, entry: Answered) -> int:
    classes = entry.classes
    text = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
    if classes and text in classes:
        return classes.index(text)
    count = len(classes) if classes else entry.width
    index = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if index is not None and index == value and 0 <= index < count:
        return index
    if classes:
        raise BadFeedback(
            f"{where}.label is not a class of version {entry.version}: give one of its classes "
            f"({', '.join(classes)}) or a class index 0..{count - 1}",
            422,
        )
    raise BadFeedback(
        f"{where}.label must be a class index 0..{count - 1}: version {entry.version} was registered without its "
        "class labels",
        422,
    )


def _as_trained(text: str) -> Any:
    """A class label as the trainer read it from its data: the tags hold text, the data held numbers when it could."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


@dataclass
class Checked:
    """A batch of labels checked whole at one replica: each item's result there, and the labels that join there."""

    results: list[str]
    """Per item: joined, unknown or expired."""
    joined: list[tuple[int, str, Answered, np.ndarray, Any]]
    """(position in results, request id, its answer, the label as compared, the label as written) of each item
    that joins."""

    def counts(self) -> dict[str, int]:
        return {result: self.results.count(result) for result in RESULTS}


# --- the gateway's part ---------------------------------------------------------------------------


class Feedback:
    """Join stores and quality windows of every model whose route asks for feedback."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.clock = clock
        self.wall = wall
        self.stores: dict[str, JoinStore] = {}
        self.settings: dict[str, FeedbackMonitoring] = {}
        self.windows: dict[tuple[str, str, str], Quality] = {}
        self.undecoded: list[Answered] = []
        self._due = asyncio.Event()
        self._reported: set[str] = set()

    def load(self, routes: Collection[Route]) -> None:
        """Take the routes' feedback settings; stores and the windows of versions still in their roles are kept (their
        settings applied), so a canary step forgets nothing."""
        stores, settings = {}, {}
        for route in routes:
            spec = route.spec.feedback
            if spec is None:
                continue
            settings[route.name] = spec
            store = self.stores.get(route.name) or JoinStore(route.name, spec.max_pending, 0, self.clock)
            store.max_pending, store.ttl_s = spec.max_pending, duration_seconds(spec.ttl)
            stores[route.name] = store
            for result in ("unknown", "expired"):
                FEEDBACK_LABELS.labels(route.name, "", "", result)
            for target in route.versions.values():
                FEEDBACK_LABELS.labels(route.name, target.version, target.role, "joined")
        live = {(route.name, t.version, t.role) for route in routes for t in route.versions.values()}
        self.stores, self.settings = stores, settings
        self.windows = {
            key: quality
            for key, quality in self.windows.items()
            if key in live and key[0] in settings and quality.fingerprint == settings[key[0]].window
        }

    def record(self, route: Route, target: Target, request_id: str, answer: Body) -> None:
        """Remember an answered request (request path: an object, a dict insert and a list append)."""
        store = self.stores.get(route.name)
        if store is None:
            return
        entry = Answered(target.version, target.role, target.task, target.classes, self.wall(), self.clock(), answer)
        store.add(request_id, entry)
        if len(self.undecoded) < DECODE_QUEUE:
            self.undecoded.append(entry)
            if len(self.undecoded) >= DECODE_BATCH:
                self._due.set()

    def flush(self) -> None:
        """Decode every answer queued now."""
        batch, self.undecoded = self.undecoded, []
        decode(batch)

    async def run(self) -> None:
        """Decode queued answers a batch at a time, the event loop serving requests in between."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), DECODE_INTERVAL)
            self._due.clear()
            while self.undecoded:
                batch = self.undecoded[:DECODE_BATCH]
                del self.undecoded[:DECODE_BATCH]
                decode(batch)
                await asyncio.sleep(0)

    def check(self, route: Route, items: list[tuple[str, Any]], positions: list[int] | None = None) -> Checked:
        """Each item's result at this replica, and the labels that join here, checked against what they label;
        raises BadFeedback (naming labels[positions[i]], the item's place in the batch the caller sent) before
        anything is applied."""
        store = self.stores.get(route.name)
        if store is None:
            raise BadFeedback(
                f"model {route.name!r} does not take feedback: enable spec.monitoring.feedback of its ModelDeployment",
                404,
            )
        store.expire(self.clock())
        found = [store.find(request_id) for request_id, _ in items]
        decode([entry for _, entry in found if entry is not None and entry.answer is not None])
        results: list[str] = []
        joined: list[tuple[int, str, Answered, np.ndarray, Any]] = []
        seen: set[str] = set()
        for i, ((request_id, label), (result, entry)) in enumerate(zip(items, found, strict=True)):
            if entry is not None and (request_id in seen or entry.prediction is None):
                if entry.error is not None:
                    self._report_once(route.name, f"model {route.name}: an answer could not be read: {entry.error}")
                result, entry = "unknown", None
            results.append(result)
            if entry is not None:
                seen.add(request_id)
                values, written = truth(f"labels[{i if positions is None else positions[i]}]", label, entry)
                joined.append((i, request_id, entry, values, written))
        return Checked(results, joined)

    def apply(self, route: Route, checked: Checked) -> list[dict[str, Any]]:
        """Join what checked found here: each answer is labelled once and its label counted in its version's
        window. An answer another batch took since the check (the caller's replica asks its peers in between) is
        not joined twice: its item becomes unknown in checked. The records of the joined labels, for the labels
        file."""
        store = self.stores[route.name]
        now = self.wall()
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        window = self.settings[route.name].window
        records = []
        for i, request_id, entry, values, written in checked.joined:
            if not store.take(request_id, entry):
                checked.results[i] = "expired" if request_id in store.expired else "unknown"
                continue
            key = (route.name, entry.version, entry.role)
            quality = self.windows.get(key)
            if quality is None or quality.task != entry.task:
                quality = self.windows[key] = Quality(entry.task, duration_seconds(window), self.clock, window)
            assert entry.prediction is not None
            quality.add(entry.prediction, values)
            FEEDBACK_LABELS.labels(*key, "joined").inc()
            records.append({"requestId": request_id, "time": stamp, "label": written})
        return records

    def missed(self, route: Route, checked: Checked) -> None:
        """Count the items of a batch that joined nowhere, unknown or expired: once, by the replica the caller sent
        the batch to, after every replica joined its part."""
        counts = checked.counts()
        for result in ("unknown", "expired"):
            if counts[result]:
                FEEDBACK_LABELS.labels(route.name, "", "", result).inc(counts[result])

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.error("%s", message)


class QualityCollector:
    """/metrics' live quality series, computed from the windows when scraped."""

    def __init__(self, feedback: Callable[[], Feedback]):
        self._feedback = feedback

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "role"]
        accuracy = GaugeMetricFamily(
            "kubeforge_live_accuracy",
            "Fraction of labelled predictions (rows) that were right over the feedback window; absent below minLabels",
            labels=labels,
        )
        mae = GaugeMetricFamily(
            "kubeforge_live_mae",
            "Mean absolute error of labelled predictions over the feedback window; absent below minLabels",
            labels=labels,
        )
        rmse = GaugeMetricFamily(
            "kubeforge_live_rmse",
            "Root mean squared error of labelled predictions over the feedback window; absent below minLabels",
            labels=labels,
        )
        count = GaugeMetricFamily(
            "kubeforge_live_labels",
            "Labelled predictions (rows) in the feedback window of a version (quality needs minLabels)",
            labels=labels,
        )
        feedback = self._feedback()
        for key, quality in list(feedback.windows.items()):
            settings = feedback.settings.get(key[0])
            if settings is None:
                continue
            totals = quality.counts.totals()
            rows = float(totals[0])
            count.add_metric(list(key), rows)
            if rows < settings.min_labels:
                continue
            if quality.task == "classification":
                accuracy.add_metric(list(key), float(totals[1]) / rows)
            else:
                mae.add_metric(list(key), float(totals[1]) / rows)
                rmse.add_metric(list(key), math.sqrt(float(totals[2]) / rows))
        yield from (accuracy, mae, rmse, count)


# --- the training data set ---------------------------------------------------------------------


def since_seconds(since: str) -> float:
    """?since= as seconds; BadFeedback naming it when it is no duration."""
    if not re.fullmatch(DURATION_PATTERN, since) or duration_seconds(since) <= 0:
        raise BadFeedback("since must be a duration such as 30m, 24h or 1h30m")
    return duration_seconds(since)


def _lines(directory: Path, name: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of file name and its rotated copies (name.1 newer than name.2), oldest first; lines that
    are not JSON objects are skipped."""
    rotated = sorted(
        (int(p.name[len(name) + 1 :]), p) for p in directory.glob(f"{name}.*") if p.name[len(name) + 1 :].isdigit()
    )
    files = [p for _, p in reversed(rotated)] + [directory / name]
    for path in files:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    if isinstance(item, dict):
                        yield item


class DataSet(NamedTuple):
    """A data set as CSV, how many labelled rows it left out (answered by versions without its features), and the
    feature names of every version it knows of: what a features or target asked for is checked against."""

    text: str
    left_out: int
    known: frozenset[str]


def feature_list(text: str | None) -> list[str] | None:
    """?features=f0,f2 as names, in that order; None when not given. BadFeedback naming it when it names none or
    one twice."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise BadFeedback("features must name feature columns once each, separated by commas: f0,f1,f2")
    return names


def dataset(
    directory: Path,
    route: Route,
    since_s: float,
    target: str,
    now: float,
    features: list[str] | None = None,
    check: bool = True,
) -> DataSet:
    """The labelled payload records of route's model answered within since_s before now, as CSV: one column per
    feature, the label column target and event_timestamp (when the request was answered), one row per row of each
    request. Records without a label, or whose features were redacted, are left out.

    A row's features are named as the version that answered it named them (also a version the route no longer
    has: the payload log keeps each version's names; feature_<i> where none are known). The columns are features,
    else the stable version's: what a retrain of the model trains on. A row of a version that lacks one of them
    (a canary that took other features, say) is left out and counted (DataSet.left_out, and the gateway's log): a
    column half empty would only make the trainer refuse the whole set. Where the stable version's names are not
    known either, the columns are every name the rows have.

    With check, target and features are first checked against the feature names this replica knows of
    (:func:`check_names`); a gateway with other replicas checks them once against what all of them know instead,
    since a version retired from the route may be known only to the replicas that answered it."""
    if not target or target == EVENT_TIMESTAMP:
        raise BadFeedback(f"target must name the label column, other than {EVENT_TIMESTAMP}")
    served = {version: list(t.features) for version, t in route.versions.items() if t.features}
    names_by_version = {**logged_features(directory, route.name), **served}
    known = frozenset(name for names in names_by_version.values() for name in names)
    if check:
        check_names(route.name, target, features, known)
    labels = {
        item["requestId"]: item["label"]
        for item in _lines(directory, f"{route.name}.labels.jsonl")
        if isinstance(item.get("requestId"), str) and "label" in item
    }
    start = datetime.fromtimestamp(now - since_s, UTC)
    wanted = features or names_by_version.get(route.stable.version)
    columns = dict.fromkeys(wanted or [])  # the header even without rows
    rows: list[dict[str, Any]] = []
    left_out: dict[str, int] = {}
    for record in _lines(directory, f"{route.name}.jsonl"):
        label = labels.get(record.get("requestId"))
        if label is None:
            continue
        try:
            when = datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
            values = np.asarray(record["inputs"][INPUT_NAME], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            continue  # redacted, or no features input
        if when < start:
            continue
        matrix = values.reshape(values.shape[0] if values.ndim else 1, -1)
        per_row = label if isinstance(label, list) else [label]
        if len(per_row) != len(matrix):
            continue
        version = str(record.get("version"))
        names = names_by_version.get(version)
        if names is None or len(names) != matrix.shape[1]:
            names = [f"feature_{i}" for i in range(matrix.shape[1])]
        if wanted is not None and not columns.keys() <= set(names):
            left_out[version] = left_out.get(version, 0) + len(matrix)
            continue
        if wanted is None:
            columns.update(dict.fromkeys(names))
        for row, value in zip(matrix, per_row, strict=True):
            cells = dict(zip(names, row.tolist(), strict=True))
            if wanted is not None:
                cells = {name: cells[name] for name in columns}
            rows.append({**cells, target: value, EVENT_TIMESTAMP: record["time"]})
    if left_out:
        log.info(
            "data set of model %s: %d labelled rows left out, answered by versions without one of its features %s "
            "(rows by version: %s)",
            route.name, sum(left_out.values()), ", ".join(columns), left_out,
        )  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, [*columns, target, EVENT_TIMESTAMP], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return DataSet(out.getvalue(), sum(left_out.values()), known)


def check_names(model: str, target: str, features: list[str] | None, known: frozenset[str]) -> None:
    """BadFeedback when target is a feature name, or features names one that no version in known takes."""
    if target in known or target in (features or ()):
        raise BadFeedback("target is the name of one of the model's features: choose another name for the label")
    unknown = [f for f in features or () if f not in known and not re.fullmatch(r"feature_\d+", f)]
    if unknown:
        raise BadFeedback(
            f"features: {unknown[0]!r} is not a feature of model {model!r}; its versions take "
            f"{', '.join(sorted(known)) or 'features whose names are not known (feature_0, feature_1, ...)'}"
        )


def merge_datasets(sets: list[DataSet]) -> DataSet:
    """Data sets of several gateway replicas (CSV, as :func:`dataset` writes them) as one: every replica's rows,
    oldest first, under the columns of all (a feature only one replica met is empty in the others' rows), every
    replica's rows left out, and the feature names any of them knows of."""
    readers = [csv.DictReader(io.StringIO(found.text)) for found in sets]
    columns: dict[str, None] = {}
    rows: list[dict[str, str]] = []
    for reader in readers:
        columns.update(dict.fromkeys(reader.fieldnames or []))
        rows.extend(reader)
    last = list(readers[0].fieldnames or [])[-2:]  # the label column and event_timestamp, last in each
    order = [name for name in columns if name not in last] + last
    rows.sort(key=lambda row: row.get(EVENT_TIMESTAMP, ""))
    out = io.StringIO()
    writer = csv.DictWriter(out, order, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    known = frozenset().union(*(found.known for found in sets))
    return DataSet(out.getvalue(), sum(found.left_out for found in sets), known)

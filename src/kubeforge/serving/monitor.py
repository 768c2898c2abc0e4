"""Drift of each version's live inputs and predictions, measured where the traffic passes: at the gateway.

The operator puts every live version's training baseline (the histograms the trainer logged
with it) into the route table. On each load the gateway builds a
:class:`~kubeforge.monitoring.drift.DriftTracker` per version that has one, and keeps it across
loads that leave its baseline and settings alone, so a canary weight change does not empty the
window. A version without a baseline is served without drift series, and that is logged once
(the operator says so in the ModelDeployment's ``DriftMonitored`` condition).

The request path only queues references to what the version received (the decoded request body,
or the one rebuilt from the online store) and what it answered. A task counts the queue after
the responses went out, in batches (numpy costs per call more than per value: an update of a few
dozen rows costs little more than one of a single row), a few dozen requests at a time between
which the event loop serves others, so no response waits for more than one batch; a scrape of
``/metrics`` counts whatever is left first. So decoding tensors runs on no response's clock, and
nothing here fails a request: an error is counted (``kubeforge_drift_errors_total``) and logged
once per version and kind. Memory stays bounded: a tracker's is fixed when it is built, and at
most :data:`PENDING_LIMIT` requests wait per version; more are dropped and counted.

Statistics are computed at scrape time, by a custom collector calling each tracker's ``report()``
(a few milliseconds for a hundred features), so drift costs nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from kubeforge.api.meta import duration_seconds
from kubeforge.core.modelcontract import INPUT_NAME, OUTPUT_NAME
from kubeforge.monitoring.drift import DriftTracker, from_baseline

from .metrics import DRIFT_DROPPED, DRIFT_ERRORS
from .oip import NUMPY, Body, headers, tensors
from .routes import Route, Target, VersionDrift

log = logging.getLogger(__name__)

FLUSH_REQUESTS = 128
"""Requests queued for one version that start the counting task, right after the response that completed them."""
BATCH = 64
"""Requests counted at once: a fraction of a millisecond of the event loop's time, after which it serves others."""
PENDING_LIMIT = 8192
"""Requests queued for one version at most: more arrive only when counting cannot keep up, and are dropped."""
FLUSH_INTERVAL = 1.0
"""Seconds at most between counting what is queued, so a quiet version's window stays current without scrapes."""

_LABELS = ("model", "version", "role")


class Tracked:
    """A version's tracker and the requests waiting to be counted into it."""

    def __init__(self, target: Target, spec: VersionDrift, tracker: DriftTracker, fingerprint: str):
        self.target = target
        self.tracker = tracker
        self.fingerprint = fingerprint
        self.features = len(spec.features)
        # (body, JSON header length) of what the version received, and of what it answered.
        self.pending: list[tuple[bytes, int | None, bytes, int | None]] = []
        self.reported: set[str] = set()

    def count(self, limit: int | None = None) -> None:
        """Count the oldest limit queued requests (all without a limit): their input rows in one update, their
        predictions in another."""
        pending = self.pending[:limit]
        del self.pending[:limit]
        if not pending:
            return
        inputs, bad_inputs = _stack([(b, n) for b, n, _, _ in pending], "inputs", INPUT_NAME, self.features)
        outputs, bad_outputs = _stack([(a, n) for _, _, a, n in pending], "outputs", OUTPUT_NAME, None, optional=True)
        for err in {**bad_outputs, **bad_inputs}.values():  # one count per request
            self.failed(err)
        for count, values in ((self.tracker.observe, inputs), (self.tracker.observe_predictions, outputs)):
            if values is not None:
                try:
                    count(values)
                except Exception as err:
                    self.failed(err, len(pending))

    def failed(self, err: Exception, requests: int = 1) -> None:
        """Count requests that could not be observed, and log why."""
        DRIFT_ERRORS.labels(*self.labels).inc(requests)
        self.log_once("not observed", err)

    def log_once(self, what: str, err: Exception) -> None:
        """Log the first error of each kind: a version's requests tend to fail alike, and the count says how often."""
        kind = type(err).__name__
        if kind not in self.reported:
            self.reported.add(kind)
            model, version, role = self.labels
            log.error("drift of model %s version %s (%s) %s: %s: %s", model, version, role, what, kind, err)

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.target.model, self.target.version, self.target.role)


def _stack(
    bodies: list[Body], kind: str, name: str, width: int | None, optional: bool = False
) -> tuple[np.ndarray | None, dict[int, Exception]]:
    """The named [rows, width] tensor of every body stacked into one, and what failed, by position. Flat FP32 JSON
    data, what most callers and Triton send, is gathered into one list and converted once: per small tensor,
    numpy's conversion costs more than the values. Other data is decoded body by body. width None takes the
    first tensor's; optional: a body without the tensor (a caller who asked for other outputs) is skipped."""
    flat: list[Any] = []
    arrays: list[np.ndarray] = []
    failed: dict[int, Exception] = {}
    for index, ((body, length), header) in enumerate(zip(bodies, headers(bodies), strict=True)):
        try:
            if isinstance(header, Exception):
                raise header
            for tensor in header[kind]:
                if tensor["name"] == name:
                    break
            else:
                if optional:
                    continue
                raise ValueError(f"no {kind[:-1]} {name!r}")
            shape, data = tensor["shape"], tensor.get("data")
            if width is None:
                width = math.prod(shape[1:])
            if (
                type(data) is list
                and tensor["datatype"] == "FP32"
                and len(shape) == 2
                and shape[1] == width
                and len(data) == shape[0] * width
                and (not data or type(data[0]) is not list)
            ):
                flat += data
                continue
            if tensor["datatype"] not in NUMPY or math.prod(shape[1:]) != width:
                raise ValueError(f"{kind[:-1]} {name!r} is {tensor['datatype']} {shape}, not numbers [rows, {width}]")
            arrays.append(tensors(body, length, kind, name.__eq__, header)[name].reshape(-1, width))
        except Exception as err:
            failed[index] = err
    if flat:
        assert width is not None  # set by the first tensor gathered into flat
        arrays.append(np.asarray(flat, dtype=np.float32).reshape(-1, width))
    return (np.concatenate(arrays) if arrays else None), failed


class Monitor:
    """The drift trackers of every version the route table serves, fed off the request path."""

    def __init__(self) -> None:
        self.tracked: list[Tracked] = []
        self._due = asyncio.Event()  # enough requests queued to count them before FLUSH_INTERVAL is up
        self._without_baseline: set[tuple[str, str]] = set()  # (model, version) logged once

    def load(self, routes: Iterable[Route]) -> None:
        """Give each version of routes its tracker: kept when its baseline and settings did not change."""
        tracked = []
        for route in routes:
            settings = route.spec.drift
            for spec in route.spec.versions:
                target = route.versions[spec.version]
                if settings is None or spec.drift is None:
                    target.drift = None
                    if settings is not None and (route.name, spec.version) not in self._without_baseline:
                        self._without_baseline.add((route.name, spec.version))
                        log.warning(
                            "model %s version %s has no drift baseline: no drift series", route.name, target.version
                        )
                    continue
                fingerprint = settings.model_dump_json() + spec.drift.model_dump_json()
                if not isinstance(target.drift, Tracked) or target.drift.fingerprint != fingerprint:
                    target.drift = self._build(route, target, spec.drift, fingerprint)
                tracked.append(target.drift)
        self.tracked = tracked

    @staticmethod
    def _build(route: Route, target: Target, spec: VersionDrift, fingerprint: str) -> Tracked:
        settings = route.spec.drift
        assert settings is not None
        tracker = from_baseline(
            {"features": spec.histograms()},
            spec.features,
            task=spec.task,
            classes=spec.classes,
            window_s=duration_seconds(settings.window),
            min_samples=settings.min_samples,
        )
        for feature, why in tracker.skipped.items():
            log.warning("model %s version %s: feature %s not tracked: %s", route.name, target.version, feature, why)
        return Tracked(target, spec, tracker, fingerprint)

    def record(self, target: Target, body: bytes, header_length: int | None, answer: bytes, answer_header: int | None):
        """Queue what target received and answered; counted once the response is out. Costs a list append."""
        tracked = target.drift
        if not isinstance(tracked, Tracked):
            return
        if len(tracked.pending) >= PENDING_LIMIT:
            DRIFT_DROPPED.labels(*tracked.labels).inc()
            return
        tracked.pending.append((body, header_length, answer, answer_header))
        if len(tracked.pending) >= FLUSH_REQUESTS:
            self._due.set()

    def flush(self) -> None:
        """Count everything queued now (on the event loop: the trackers are not locked)."""
        for tracked in self.tracked:
            tracked.count()

    async def run(self) -> None:
        """Count what is queued, a batch at a time with the event loop serving requests in between: full batches
        as soon as FLUSH_REQUESTS wait for a version, and everything at least every FLUSH_INTERVAL. Under load
        only full batches are counted, which is what keeps the cost per request low."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), FLUSH_INTERVAL)
            smallest = BATCH if self._due.is_set() else 1
            self._due.clear()
            while busy := [t for t in self.tracked if len(t.pending) >= smallest]:
                for tracked in busy:
                    tracked.count(BATCH)
                    await asyncio.sleep(0)


class DriftCollector:
    """/metrics' drift series, computed from each tracker's report when scraped."""

    def __init__(self, tracked: Callable[[], list[Tracked]], flush: Callable[[], None]):
        self._tracked = tracked
        self._flush = flush

    def collect(self) -> Iterator[Metric]:
        self._flush()
        psi = GaugeMetricFamily(
            "kubeforge_drift_psi",
            "PSI of a feature's live values against the version's training baseline over the drift window; "
            "absent below the window's minimum samples",
            labels=[*_LABELS, "feature"],
        )
        ks = GaugeMetricFamily(
            "kubeforge_drift_ks",
            "KS statistic (largest CDF distance at the baseline's bin edges) of a feature's live values against "
            "the training baseline over the drift window; absent below the minimum samples",
            labels=[*_LABELS, "feature"],
        )
        predictions = GaugeMetricFamily(
            "kubeforge_prediction_drift_psi",
            "PSI of the predictions (class or value) over the drift window against their reference",
            labels=list(_LABELS),
        )
        samples = GaugeMetricFamily(
            "kubeforge_drift_window_samples",
            "Input rows in the drift window of a version (statistics need the window's minimum samples)",
            labels=list(_LABELS),
        )
        for tracked in self._tracked():
            labels = list(tracked.labels)
            try:
                report = tracked.tracker.report()
            except Exception as err:  # a scrape must not fail for one version
                tracked.log_once("not reported", err)
                continue
            samples.add_metric(labels, report.samples)
            for feature, drift in report.features.items():
                if drift.psi is not None:
                    psi.add_metric([*labels, feature], drift.psi)
                if drift.ks is not None:
                    ks.add_metric([*labels, feature], drift.ks)
            if report.predictions.psi is not None:
                predictions.add_metric(labels, report.predictions.psi)
        yield from (psi, ks, predictions, samples)

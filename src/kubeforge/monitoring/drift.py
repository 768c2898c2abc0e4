"""Input and prediction drift of a served model version, against its training baseline.

The trainer logs with every version a histogram per feature of the training data (see
:class:`~kubeforge.core.modelcontract.Baseline`). Live traffic is counted into the same
bins, plus two open-ended outer bins (below the first edge, above the last) so that values
outside the training range are counted rather than lost, and one for NaN (a missing value).
Counts live in a :class:`~kubeforge.monitoring.window.SlidingCounts` ring, so memory is
``features * bins * buckets`` integers whatever the traffic, and the window slides without
keeping raw values.

Two statistics compare a window with its baseline:

- PSI, ``Σ (q - p) · ln(q / p)`` over the bins, with ``p`` the baseline's and ``q`` the
  window's share of each bin. An empty bin would make it infinite, so shares below
  :data:`EPSILON` are raised to it (without renormalising), as most implementations do: a
  bin empty on both sides adds nothing, one empty on one side adds a bounded amount. The
  outer bins are always empty in the baseline, so values beyond the training range weigh
  in through that floor.
- KS, the largest distance between the baseline's and the window's empirical CDFs. From
  binned counts both CDFs are known only at the bin edges, so this is the largest distance
  over the edges: a lower bound of the exact two-sample statistic, short of it by at most
  the largest share a single bin holds on either side.

PSI from a sample has a noise floor of about ``(bins - 1) / samples`` (plus the effect of
the floor on bins the sample leaves empty): with the trainer's 20 bins and 100 samples an
unchanged distribution already reads about 0.2, the usual alarm threshold. Hence
:data:`MIN_SAMPLES` of 500 (noise ≈ 0.04) rather than fewer; below it a statistic is
reported as "not enough samples", not as a number.

Predictions are counted the same way: the predicted class (argmax of the probabilities)
for classification, the predicted value for regression. The baseline has no prediction
histogram, so unless one is given (class counts, or a histogram of the training targets),
the first :data:`REFERENCE_SIZE` predictions the tracker sees become the reference; for
regression their deciles become the bin edges. Prediction drift then says how the
predictions moved since the version started serving in this process, not since training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from kubeforge.core.modelcontract import Baseline, FeatureHistogram

from .window import SlidingCounts

WINDOW_S = 300.0
BUCKETS = 30
MIN_SAMPLES = 500
REFERENCE_SIZE = 1000
EPSILON = 1e-4
# Quantile bins for a regression reference derived from the first predictions: deciles,
# the usual choice for PSI; more bins would raise its noise floor.
DERIVED_BINS = 10
# Rows binned at once: the comparison against the edges holds rows * features * bins
# booleans, so large requests go in blocks of this many rows.
BLOCK_ROWS = 1024


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of actual against expected (counts per bin, same bins)."""
    p = np.maximum(expected / expected.sum(), epsilon)
    q = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def binned_ks(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest distance between the two empirical CDFs at the bin edges (counts per bin, same bins)."""
    return float(np.max(np.abs(np.cumsum(expected) / expected.sum() - np.cumsum(actual) / actual.sum())))


@dataclass(frozen=True)
class Drift:
    """Drift of one feature, or of the predictions, over the window."""

    samples: int
    """Values in the window that psi and ks compare: all but NaN."""
    psi: float | None = None
    ks: float | None = None
    """None for classes, which have no order."""
    nans: int = 0
    """NaN values in the window, left out of psi and ks."""
    reason: str = ""
    """Why psi is None: too few samples, a reference still being collected, or not tracked."""
    tracked: bool = True
    """False when the baseline gives nothing to compare with; reason says why."""


@dataclass(frozen=True)
class DriftReport:
    """Drift over the window that ends now."""

    window_s: float
    samples: int
    """Rows observed in the window."""
    features: dict[str, Drift]
    """Every input feature, in input order."""
    predictions: Drift
    prediction_reference: str
    """What prediction drift compares against."""


class _Bins:
    """Slots of one flat counts vector for values binned at the edges of their histograms.

    A histogram of k bins gets k + 3 consecutive slots: below its first edge, its k bins
    (each including its lower edge, the last one its upper edge too, as numpy.histogram
    counts), above its last edge, and NaN.
    """

    def __init__(self, histograms: Sequence[tuple[Sequence[float], Sequence[int]]]):
        bins = np.array([len(counts) for _, counts in histograms], dtype=np.intp)
        # Padding with NaN keeps padded edges out of the count: no value is >= NaN.
        self._lower = np.full((len(histograms), bins.max(initial=0)), np.nan)
        for row, (edges, _) in enumerate(histograms):
            self._lower[row, : bins[row]] = edges[:-1]
        self._upper = np.array([edges[-1] for edges, _ in histograms], dtype=np.float64)
        self._nan = bins + 2
        self.starts = np.cumsum(bins + 3) - (bins + 3)
        self.size = int((bins + 3).sum())
        self.expected = [np.array([0, *counts, 0], dtype=np.float64) for _, counts in histograms]

    def slots(self, values: np.ndarray) -> np.ndarray:
        """The slot of every value of values[rows, histograms], flattened."""
        slot = np.count_nonzero(values[:, :, None] >= self._lower, axis=2) + (values > self._upper)
        nan = np.isnan(values)
        if nan.any():
            slot = np.where(nan, self._nan, slot)
        return (slot + self.starts).ravel()

    def drift(self, totals: np.ndarray, index: int, min_samples: int, ordered: bool = True) -> Drift:
        """Drift of histogram index from the window's totals."""
        start = self.starts[index]
        expected = self.expected[index]
        counts = totals[start : start + len(expected)]
        samples, nans = int(counts.sum()), int(totals[start + len(expected)])
        if samples < min_samples:
            return Drift(samples, nans=nans, reason=f"not enough samples: {samples} of {min_samples}")
        ks = binned_ks(expected, counts) if ordered else None
        return Drift(samples, psi(expected, counts), ks, nans)


def _problem(edges: Sequence[float], counts: Sequence[int]) -> str | None:
    """What makes a histogram unusable as a reference, or None."""
    if not counts:
        return "histogram has no bins"
    if len(edges) != len(counts) + 1:
        return f"histogram has {len(edges)} edges for {len(counts)} bins"
    lows = np.asarray(edges, dtype=np.float64)
    if not np.isfinite(lows).all() or (np.diff(lows) <= 0).any():
        return "histogram edges are not strictly increasing finite numbers"
    if min(counts) < 0 or sum(counts) == 0:
        return "histogram counts are negative or all zero"
    return None


class _Predictions:
    """Predicted values over the window, against a reference given or collected from the first predictions."""

    def __init__(
        self,
        values: Callable[[np.ndarray], np.ndarray],
        window: Callable[[int], SlidingCounts],
        *,
        ordered: bool,
        edges: Sequence[float] | None,
        reference: tuple[Sequence[float], Sequence[int]] | None,
        reference_size: int,
    ):
        self._values = values
        self._ordered = ordered
        self._edges = edges
        if reference is not None:
            bins = len(reference[1])
        elif edges is not None:
            bins = len(edges) - 1
        else:
            bins = DERIVED_BINS  # at most: equal quantiles merge
        self._slots = bins + 3
        self._window = window(self._slots)
        self._bins = _Bins([reference]) if reference else None
        self._buffer = np.empty(0 if reference else reference_size)
        self._collected = 0
        self.source = "given reference" if reference else f"first {reference_size} predictions"

    def observe(self, outputs: np.ndarray) -> None:
        values = self._values(outputs)
        if self._bins is None:
            # Infinite values have no quantile: the reference takes finite ones only.
            taken = np.flatnonzero(np.isfinite(values))[: len(self._buffer) - self._collected]
            self._buffer[self._collected : self._collected + len(taken)] = values[taken]
            self._collected += len(taken)
            if self._collected < len(self._buffer):
                return
            edges = self._edges if self._edges is not None else _quantile_edges(self._buffer)
            self._bins = _Bins([(edges, np.histogram(self._buffer, edges)[0].tolist())])
            # The rest of the request that completed the reference is the window's first traffic.
            values = values[taken[-1] + 1 :]
        self._window.add(np.bincount(self._bins.slots(values[:, None]), minlength=self._slots))

    def drift(self, min_samples: int) -> Drift:
        if self._bins is None:
            return Drift(0, reason=f"collecting the reference: {self._collected} of {len(self._buffer)} predictions")
        return self._bins.drift(self._window.totals(), 0, min_samples, self._ordered)

    @property
    def nbytes(self) -> int:
        return self._window.nbytes + self._buffer.nbytes


def _quantile_edges(values: np.ndarray) -> list[float]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, DERIVED_BINS + 1)))
    if len(edges) < 2:  # all values equal: one bin around them, as numpy.histogram makes
        return [float(edges[0]) - 0.5, float(edges[0]) + 0.5]
    return edges.tolist()


def _outputs(outputs: np.ndarray, width: int) -> np.ndarray:
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim == 1 and width == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"predictions must be [rows, {width}], got shape {values.shape}")
    return values


def _predicted_classes(width: int) -> Callable[[np.ndarray], np.ndarray]:
    def classes(outputs: np.ndarray) -> np.ndarray:
        probabilities = _outputs(outputs, width)
        return np.where(np.isnan(probabilities).any(axis=1), np.nan, np.argmax(probabilities, axis=1))

    return classes


def _predicted_values(outputs: np.ndarray) -> np.ndarray:
    return _outputs(outputs, 1)[:, 0]


class DriftTracker:
    """Live inputs and predictions of one model version over a sliding window, and their drift.

    Call :meth:`observe` with each request's input rows, :meth:`observe_predictions` with
    its outputs, and :meth:`report` whenever drift is wanted. :func:`from_baseline` builds
    one from the baseline artifact. Memory is fixed at construction (:attr:`nbytes`). Not
    locked: meant for one event loop, as the gateway runs.

    ``histograms`` maps a feature name to its training histogram, or to why there is no
    usable one; a feature of ``features`` without a usable histogram is skipped, its
    reason in the report, and its column ignored. For predictions, ``task`` and
    ``classes`` are the version's tags; ``prediction_reference`` is the class counts
    (classification) or a histogram of the targets (regression) to compare with, if known.
    """

    def __init__(
        self,
        features: Sequence[str],
        histograms: Mapping[str, FeatureHistogram | str],
        *,
        task: str | None = None,
        classes: Sequence[str] | None = None,
        prediction_reference: FeatureHistogram | Sequence[int] | None = None,
        window_s: float = WINDOW_S,
        buckets: int = BUCKETS,
        min_samples: int = MIN_SAMPLES,
        reference_size: int = REFERENCE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ):
        if reference_size < 1 or min_samples < 1:
            raise ValueError(f"reference_size and min_samples must be >= 1, got {reference_size} and {min_samples}")
        self._features = list(features)
        self._skipped: dict[str, str] = {}
        tracked: list[tuple[int, FeatureHistogram]] = []
        for column, name in enumerate(self._features):
            found = histograms.get(name, "no histogram in the baseline")
            problem = found if isinstance(found, str) else _problem(found.edges, found.counts)
            if problem is None:
                assert not isinstance(found, str)  # a str is its own problem
                tracked.append((column, found))
            else:
                self._skipped[name] = problem
        self._columns = np.array([column for column, _ in tracked], dtype=np.intp)
        self._index = {self._features[column]: index for index, (column, _) in enumerate(tracked)}
        self._bins = _Bins([(h.edges, h.counts) for _, h in tracked])
        self._slots = self._bins.size + 1  # the last slot counts rows

        def window(slots: int) -> SlidingCounts:
            return SlidingCounts(slots, window_s, buckets, clock)

        self._window = window(self._slots)
        self._predictions = _predictions(task, classes, prediction_reference, reference_size, window)
        self._window_s = window_s
        self._min_samples = min_samples

    def observe(self, matrix: np.ndarray) -> None:
        """Count a request's input rows, matrix[rows, features] in the model's input order.

        Raises ValueError for another shape: the caller checks requests against the model's
        metadata first, so that is a bug, not bad data.
        """
        values = np.asarray(matrix, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self._features):
            raise ValueError(f"inputs must be [rows, {len(self._features)}], got shape {values.shape}")
        for start in range(0, len(values), BLOCK_ROWS):
            block = values[start : start + BLOCK_ROWS, self._columns]
            counts = np.bincount(self._bins.slots(block), minlength=self._slots)
            counts[-1] = len(block)
            self._window.add(counts)

    def observe_predictions(self, outputs: np.ndarray) -> None:
        """Count a request's outputs: [rows, classes] probabilities, or [rows, 1] (or [rows]) values.

        Raises ValueError for another shape, as :meth:`observe` does.
        """
        if isinstance(self._predictions, _Predictions):
            self._predictions.observe(outputs)

    def report(self) -> DriftReport:
        """PSI and KS of every tracked feature and of the predictions over the window that ends now."""
        totals = self._window.totals()
        features = {
            name: Drift(0, reason=self._skipped[name], tracked=False)
            if name in self._skipped
            else self._bins.drift(totals, self._index[name], self._min_samples)
            for name in self._features
        }
        if isinstance(self._predictions, _Predictions):
            predictions, reference = self._predictions.drift(self._min_samples), self._predictions.source
        else:
            predictions, reference = Drift(0, reason=self._predictions, tracked=False), "none"
        return DriftReport(self._window_s, int(totals[-1]), features, predictions, reference)

    @property
    def skipped(self) -> dict[str, str]:
        """Features not tracked, and why: worth logging once when the version is loaded."""
        return dict(self._skipped)

    @property
    def nbytes(self) -> int:
        """Memory of the counts of features and predictions: fixed whatever the traffic."""
        held = self._window.nbytes
        if isinstance(self._predictions, _Predictions):
            held += self._predictions.nbytes
        return held


def _predictions(
    task: str | None,
    classes: Sequence[str] | None,
    reference: FeatureHistogram | Sequence[int] | None,
    reference_size: int,
    window: Callable[[int], SlidingCounts],
) -> _Predictions | str:
    """What tracks the predictions of task, or why they are not tracked."""
    if task == "classification":
        if not classes:
            return "no classes for a classification model"
        # Class indices binned at half-integers: one bin per class, in output order.
        edges = [i - 0.5 for i in range(len(classes) + 1)]
        if isinstance(reference, FeatureHistogram) or (reference is not None and len(reference) != len(classes)):
            return f"prediction reference: {len(classes)} class counts expected for classification"
        given = (edges, list(reference)) if reference is not None else None
        values = _predicted_classes(len(classes))
        ordered = False
    elif task == "regression":
        if reference is not None and not isinstance(reference, FeatureHistogram):
            return "prediction reference: a histogram of the targets expected for regression"
        edges = None
        given = (reference.edges, reference.counts) if reference is not None else None
        values = _predicted_values
        ordered = True
    else:
        return f"unknown task {task!r}"
    problem = _problem(*given) if given is not None else None
    if problem is not None:
        return f"prediction reference: {problem}"
    return _Predictions(values, window, ordered=ordered, edges=edges, reference=given, reference_size=reference_size)


def from_baseline(
    baseline: Baseline | str | bytes | Mapping[str, Any] | None, features: Sequence[str], **options: Any
) -> DriftTracker:
    """A tracker for a version from its baseline: the Baseline, its JSON, or None when the version has none.

    features are the version's input names in input order (its ``kubeforge.features``
    tag); options are :class:`DriftTracker`'s. The baseline is read entry by entry, so a
    malformed histogram skips its feature only, and an unreadable or missing baseline
    skips every feature: neither raises.
    """
    return DriftTracker(features, _histograms(baseline, features), **options)


def _histograms(
    baseline: Baseline | str | bytes | Mapping[str, Any] | None, features: Sequence[str]
) -> dict[str, FeatureHistogram | str]:
    """Each feature's histogram as the baseline lists it, or why it is unusable."""
    if baseline is None:
        return dict.fromkeys(features, "the version has no drift baseline")
    if isinstance(baseline, Baseline):
        entries: list[Any] = list(baseline.features)
    else:
        try:
            data = json.loads(baseline) if isinstance(baseline, str | bytes) else baseline
            entries = list(data["features"])
        except (ValueError, TypeError, KeyError) as exc:
            return dict.fromkeys(features, f"drift baseline unreadable: {exc!r}")
    histograms: dict[str, FeatureHistogram | str] = {}
    for entry in entries:
        name = entry.get("name") if isinstance(entry, Mapping) else getattr(entry, "name", None)
        if not isinstance(name, str):
            continue
        if name in histograms:
            histograms[name] = "listed more than once in the baseline"
            continue
        try:
            histograms[name] = FeatureHistogram.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            histograms[name] = f"malformed histogram: {'.'.join(map(str, error['loc']))}: {error['msg']}"
    return histograms

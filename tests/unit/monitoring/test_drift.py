"""Drift against the training baseline: PSI and KS against references, the sliding window, bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from scipy.special import rel_entr
from scipy.stats import ks_2samp

from kubeforge.core.modelcontract import FeatureHistogram
from kubeforge.monitoring.drift import MIN_SAMPLES, Drift, DriftTracker, binned_ks, from_baseline, psi
from kubeforge.training.baseline import compute

FEATURES = ["age", "income", "score"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def training() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(20_000, len(FEATURES)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def tracker(training: np.ndarray, clock: Clock, **options) -> DriftTracker:
    return from_baseline(compute(training, FEATURES), FEATURES, clock=clock, **options)


def counts_with_outer_bins(values: np.ndarray, edges: list[float]) -> np.ndarray:
    inside = np.histogram(values, edges)[0]
    return np.array([(values < edges[0]).sum(), *inside, (values > edges[-1]).sum()], dtype=np.float64)


def test_psi_is_the_symmetric_relative_entropy_of_the_floored_shares() -> None:
    expected = np.array([0, 40, 300, 500, 160, 0], dtype=np.float64)
    actual = np.array([3, 10, 200, 500, 280, 0], dtype=np.float64)
    p = np.maximum(expected / expected.sum(), 1e-4)
    q = np.maximum(actual / actual.sum(), 1e-4)

    assert psi(expected, actual) == pytest.approx(float(np.sum(rel_entr(q, p) + rel_entr(p, q))))
    assert psi(expected, expected) == 0.0


def test_binned_ks_equals_the_exact_statistic_when_values_sit_on_the_edges() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 10, 3000), rng.integers(2, 12, 2000)
    edges = np.arange(-0.5, 12.5)

    statistic = binned_ks(np.histogram(a, edges)[0], np.histogram(b, edges)[0])

    assert statistic == pytest.approx(ks_2samp(a, b).statistic)


def test_same_distribution_reads_as_no_drift(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock)
    drift.observe(np.random.default_rng(2).normal(size=(5000, len(FEATURES))))

    report = drift.report()

    assert report.samples == 5000
    for name in FEATURES:
        assert report.features[name].psi < 0.02
        assert report.features[name].ks < 0.03


def test_shifted_normal_drifts_and_binned_ks_is_a_lower_bound_within_the_binning_error(
    training: np.ndarray, clock: Clock
) -> None:
    baseline = compute(training, FEATURES)
    drift = from_baseline(baseline, FEATURES, clock=clock)
    live = np.random.default_rng(3).normal(loc=0.5, size=(5000, len(FEATURES)))
    drift.observe(live)

    report = drift.report()

    for column, histogram in enumerate(baseline.features):
        got = report.features[histogram.name]
        expected = np.array([0, *histogram.counts, 0], dtype=np.float64)
        window = counts_with_outer_bins(live[:, column], histogram.edges)
        assert got.psi == pytest.approx(psi(expected, window))
        assert got.psi > 0.2
        exact = ks_2samp(training[:, column], live[:, column]).statistic
        largest_bin_share = max((expected / expected.sum()).max(), (window / window.sum()).max())
        assert exact - largest_bin_share <= got.ks <= exact + 1e-12
        assert got.ks == pytest.approx(exact, abs=0.01)


def test_values_outside_the_training_range_are_counted_not_lost(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock)
    drift.observe(np.full((MIN_SAMPLES, len(FEATURES)), 1e6))

    got = drift.report().features["age"]

    assert got.samples == MIN_SAMPLES
    assert got.ks == 1.0
    assert got.psi > 5


def test_nan_inputs_are_counted_apart(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock)
    rows = np.random.default_rng(4).normal(size=(MIN_SAMPLES + 10, len(FEATURES)))
    rows[:10, 1] = np.nan
    drift.observe(rows)

    report = drift.report()

    assert (report.features["income"].samples, report.features["income"].nans) == (MIN_SAMPLES, 10)
    assert (report.features["age"].samples, report.features["age"].nans) == (MIN_SAMPLES + 10, 0)


def test_too_few_samples_give_a_reason_not_a_number(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock, min_samples=100)
    drift.observe(np.random.default_rng(5).normal(loc=3, size=(99, len(FEATURES))))

    got = drift.report().features["age"]

    assert (got.psi, got.ks) == (None, None)
    assert got.reason == "not enough samples: 99 of 100"
    assert got.tracked


def test_the_window_slides_and_old_observations_fall_out(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock, window_s=300, buckets=30, min_samples=100)
    rng = np.random.default_rng(6)
    drift.observe(rng.normal(loc=2, size=(1000, len(FEATURES))))  # drifted, at t
    clock.now += 200
    drift.observe(rng.normal(size=(1000, len(FEATURES))))  # as trained, at t + 200 s

    clock.now += 50
    both = drift.report()
    clock.now += 60  # t + 310 s: the drifted rows are out of the window
    recent = drift.report()
    clock.now += 300  # nothing left
    empty = drift.report()

    assert both.samples == 2000 and both.features["age"].psi > 1
    assert recent.samples == 1000 and recent.features["age"].psi < 0.05
    assert empty.samples == 0 and empty.features["age"].reason == "not enough samples: 0 of 100"


def test_memory_stays_bounded_over_a_long_stream(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock, task="regression", reference_size=100)
    held = drift.nbytes
    rng = np.random.default_rng(8)
    request = rng.normal(size=(2000, len(FEATURES)))
    outputs = rng.normal(size=(2000, 1))

    tracemalloc.start()
    for _ in range(500):  # 10^6 rows over 25 minutes
        drift.observe(request)
        drift.observe_predictions(outputs)
        clock.now += 3
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    report = drift.report()
    assert drift.nbytes == held
    assert peak < 2_000_000  # the stream's raw values would be 10^6 rows * 4 columns * 8 bytes = 32 MB
    # The window covers the last 290 to 300 s (its 10 s bucket in progress counts from its start).
    assert 96 * 2000 <= report.samples <= 100 * 2000
    assert report.predictions.samples == report.samples


def test_features_without_a_usable_histogram_are_skipped_with_a_reason(training: np.ndarray, clock: Clock) -> None:
    baseline = json.loads(compute(training, FEATURES).model_dump_json())
    baseline["features"][1]["edges"] = baseline["features"][1]["edges"][:-1]
    baseline["features"][2]["counts"] = "many"
    drift = from_baseline(json.dumps(baseline), [*FEATURES, "region"], clock=clock)
    live = np.random.default_rng(9).normal(size=(MIN_SAMPLES, 4))
    live[:, 3] = np.nan  # an untracked column is not read at all

    drift.observe(live)
    report = drift.report()

    assert report.features["age"].psi is not None
    assert drift.skipped == {
        "income": "histogram has 20 edges for 20 bins",
        "score": "malformed histogram: counts: Input should be a valid list",
        "region": "no histogram in the baseline",
    }
    for name, reason in drift.skipped.items():
        assert report.features[name] == Drift(0, reason=reason, tracked=False)


@pytest.mark.parametrize("baseline", [None, "{not json", b'{"rows": 3}', '["features"]'])
def test_a_missing_or_unreadable_baseline_skips_every_feature_without_raising(baseline, clock: Clock) -> None:
    drift = from_baseline(baseline, FEATURES, task="regression", clock=clock, min_samples=10, reference_size=10)
    drift.observe(np.ones((20, len(FEATURES))))
    drift.observe_predictions(np.arange(30.0))

    report = drift.report()

    assert report.samples == 20
    assert set(drift.skipped) == set(FEATURES)
    assert all(not d.tracked and d.psi is None for d in report.features.values())
    assert report.predictions.psi is not None


def probabilities(classes: np.ndarray, n: int) -> np.ndarray:
    outputs = np.full((len(classes), n), 0.1 / (n - 1))
    outputs[np.arange(len(classes)), classes] = 0.9
    return outputs


def test_classification_predictions_drift_against_the_first_predictions(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock, task="classification", classes=["a", "b", "c"], reference_size=2000)
    rng = np.random.default_rng(10)
    drift.observe_predictions(probabilities(rng.choice(3, 1500, p=[0.5, 0.3, 0.2]), 3))
    collecting = drift.report().predictions
    drift.observe_predictions(probabilities(rng.choice(3, 3500, p=[0.5, 0.3, 0.2]), 3))  # 500 complete the reference
    same = drift.report().predictions
    clock.now += 400
    drift.observe_predictions(probabilities(rng.choice(3, 3000, p=[0.2, 0.3, 0.5]), 3))
    shifted = drift.report()

    assert collecting.psi is None and collecting.reason == "collecting the reference: 1500 of 2000 predictions"
    assert same.samples == 3000 and same.psi < 0.01 and same.ks is None
    assert shifted.predictions.psi > 0.2
    assert shifted.prediction_reference == "first 2000 predictions"


def test_classification_predictions_against_given_class_counts(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(
        training, clock, task="classification", classes=["a", "b"], prediction_reference=[500, 500], min_samples=100
    )
    drift.observe_predictions(probabilities(np.zeros(200, dtype=int), 2))

    got = drift.report().predictions

    assert got.samples == 200
    assert got.psi == pytest.approx(psi(np.array([0, 500, 500, 0.0]), np.array([0, 200, 0, 0.0])))


def test_regression_predictions_drift_on_edges_from_the_first_predictions(training: np.ndarray, clock: Clock) -> None:
    drift = tracker(training, clock, task="regression")
    rng = np.random.default_rng(11)
    reference, live = rng.normal(size=1000), rng.normal(loc=0.6, size=3000)
    drift.observe_predictions(reference[:, None])
    drift.observe_predictions(live[:, None])

    got = drift.report().predictions

    assert got.samples == 3000
    assert got.psi > 0.2
    exact = ks_2samp(reference, live).statistic
    assert exact - 0.1 <= got.ks <= exact + 1e-12  # deciles: a bin holds a tenth of the reference


def test_regression_predictions_against_a_histogram_of_the_targets(training: np.ndarray, clock: Clock) -> None:
    targets = FeatureHistogram(name="target", edges=[0, 1, 2, 3], counts=[10, 80, 10], mean=1.5, std=0.5)
    drift = tracker(training, clock, task="regression", prediction_reference=targets, min_samples=10)

    drift.observe_predictions(np.array([0.5, 1.5, 2.5, 3.5] * 5))
    got = drift.report()

    assert got.prediction_reference == "given reference"
    assert got.predictions.psi == pytest.approx(psi(np.array([0, 10, 80, 10, 0.0]), np.array([0, 5, 5, 5, 5.0])))


UNORDERED = FeatureHistogram(name="target", edges=[1, 0], counts=[3], mean=0, std=0)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"task": None}, "unknown task None"),
        ({"task": "classification"}, "no classes for a classification model"),
        (
            {"task": "classification", "classes": ["a", "b"], "prediction_reference": [1, 2, 3]},
            "prediction reference: 2 class counts expected for classification",
        ),
        (
            {"task": "regression", "prediction_reference": UNORDERED},
            "prediction reference: histogram edges are not strictly increasing finite numbers",
        ),
    ],
)
def test_predictions_without_a_usable_reference_are_skipped(
    training: np.ndarray, clock: Clock, options, reason
) -> None:
    drift = tracker(training, clock, **options)
    drift.observe_predictions(np.ones((5, 2)))

    got = drift.report().predictions

    assert (got.tracked, got.reason, got.psi) == (False, reason, None)

"""The drift baseline logged with every model version: per-feature histograms of the training data.

The drift monitor compares live inputs against these (PSI, KS), so the histograms use
raw feature values, as requests carry them, and fixed bin edges the monitor can reuse.
"""

from __future__ import annotations

import numpy as np

from kubeforge.core.modelcontract import Baseline, FeatureHistogram

BINS = 20


def compute(x: np.ndarray, features: list[str]) -> Baseline:
    """Histograms of each column of x (raw training rows) over BINS equal-width bins."""
    histograms = []
    for name, column in zip(features, x.T, strict=True):
        values = column.astype(np.float64)
        counts, edges = np.histogram(values, bins=BINS)
        histograms.append(
            FeatureHistogram(
                name=name,
                edges=edges.tolist(),
                counts=counts.tolist(),
                mean=float(values.mean()),
                std=float(values.std()),
            )
        )
    return Baseline(rows=len(x), features=histograms)

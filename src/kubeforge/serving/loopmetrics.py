"""Counters and histograms for the gateway's request path: plain numbers, updated and read on its event loop.

A prometheus_client child takes a lock and checks its own state on every update: about a microsecond for a counter
and two for a histogram, and the gateway makes five such updates per request (measured: docs/benchmarks.md). Its
request path, and ``/metrics`` where Prometheus reads them, run on the one event loop thread, so the per-request
series are kept here as plain numbers instead, and turned into metric families when scraped: the same names, help,
labels and buckets as prometheus_client would expose, without the ``_created`` series. Any other metric, updated
from other threads or rarely, stays prometheus_client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, the last above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bucket holds what is <= its bound
        self.sum += value


C = TypeVar("C", CounterChild, HistogramChild)


class _Family(Collector, Generic[C]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: str) -> C:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child()
        return child

    def _child(self) -> C:
        raise NotImplementedError


class Counter(_Family[CounterChild]):
    """A counter family of plain numbers (see the module)."""

    def _child(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(values, child.value)
        yield family


class Histogram(_Family[HistogramChild]):
    """A histogram family of plain numbers (see the module)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            total, buckets = 0, []
            for le, count in zip(self.les, child.counts, strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(values, buckets, child.sum)
        yield family

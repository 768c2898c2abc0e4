"""Canary analysis over several gateway replicas: each replica's counts against its own last scrape, added up."""

from __future__ import annotations

from kubeforge.operators.deployment import analysis as an

LABELS = 'model="clf",version="2",role="canary"'


def exposition(ok: float, error: float = 0.0, psi: float | None = None, accuracy: float | None = None) -> str:
    """One gateway replica's /metrics text for the canary (version 2), as its metrics name the series."""
    lines = [
        "# TYPE kubeforge_upstream_requests counter",
        f'kubeforge_upstream_requests_total{{{LABELS},outcome="ok"}} {ok}',
        f'kubeforge_upstream_requests_total{{{LABELS},outcome="error"}} {error}',
    ]
    if psi is not None:
        lines += ["# TYPE kubeforge_drift_psi gauge", f'kubeforge_drift_psi{{{LABELS},feature="f1"}} {psi}']
    if accuracy is not None:
        lines += ["# TYPE kubeforge_live_accuracy gauge", f"kubeforge_live_accuracy{{{LABELS}}} {accuracy}"]
    return "\n".join(lines) + "\n"


def snap(text: str) -> an.Snapshot:
    return an.parse(text, "clf", "2")


def error_rate(interval: an.Snapshot) -> float | None:
    return an.builtin("error-rate", interval, min_requests=50)


def test_the_interval_adds_each_replicas_own_increase() -> None:
    prev = {"a": snap(exposition(ok=60)), "b": snap(exposition(ok=10))}
    now = {"a": snap(exposition(ok=100)), "b": snap(exposition(ok=20, error=10))}
    interval = an.interval(now, prev)
    assert interval.outcomes == {"ok": 50.0, "error": 10.0}
    assert error_rate(interval) == 10 / 60
    # Either replica alone is under minRequests (50): only the sum gives a verdict.
    assert error_rate(an.interval({"a": now["a"]}, prev)) is None


def test_a_restarted_or_new_replica_counts_from_zero_and_does_not_cancel_the_others() -> None:
    prev = {"a": snap(exposition(ok=500)), "b": snap(exposition(ok=400))}
    # a restarted (its counters start again), c is new, b went on.
    now = {"a": snap(exposition(ok=30)), "b": snap(exposition(ok=430, error=6)), "c": snap(exposition(ok=14))}
    assert an.interval(now, prev).outcomes == {"ok": 30.0 + 30.0 + 14.0, "error": 6.0}


def test_drift_is_the_largest_and_live_accuracy_the_worst_of_the_replicas() -> None:
    now = {
        "a": snap(exposition(ok=1, psi=0.05, accuracy=0.93)),
        "b": snap(exposition(ok=1, psi=0.31, accuracy=0.71)),
    }
    interval = an.interval(now, {})
    assert interval.drift == {"drift-psi": 0.31} and interval.quality == {"accuracy": 0.71}

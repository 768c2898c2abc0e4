"""A served version that turns out to be another registration (its registered model deleted and registered again,
which numbers versions from 1 again) restarts its Triton to export it; nothing else does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kubeforge.operators.deployment.rollout import REEXPORTED, Plan, Resolved
from kubeforge.operators.labels import MODEL_RUN
from tests.unit.operators.test_rollout_plan import CANARY, EVERYTHING_READY, md, run

SERVING_R1 = replace(EVERYTHING_READY, runs={"1": "r1"})


def triton(p: Plan, version: str) -> dict[str, Any]:
    return next(o for o in p.apply if o["kind"] == "Deployment" and o["metadata"]["name"] == f"clf-v{version}")


def test_the_run_is_kept_on_the_deployment_not_on_its_pods() -> None:
    b = md()
    p = run(b, Resolved(stable="1", runs={("clf", "1"): "r1"}))
    assert triton(p, "1")["metadata"]["annotations"] == {MODEL_RUN: "r1"}
    assert MODEL_RUN not in triton(p, "1")["spec"]["template"]["metadata"]["annotations"]
    assert p.reexports == {}
    assert run(b, Resolved(stable="1", runs={("clf", "1"): "r1"}), SERVING_R1).reexports == {}


def test_a_version_registered_again_restarts_its_triton_once_and_says_so() -> None:
    b = md()
    run(b, Resolved(stable="1", runs={("clf", "1"): "r1"}), SERVING_R1)
    p = run(b, Resolved(stable="1", runs={("clf", "1"): "r2"}), SERVING_R1)
    assert p.reexports == {"clf-v1": "r2"}
    assert triton(p, "1")["metadata"]["annotations"] == {MODEL_RUN: "r2"}
    (event,) = [e for e in p.events if e[1] == REEXPORTED]
    assert event[0] == "Normal" and "version 1 of clf is another registration now (run r2, was r1)" in event[2]
    # Once the Deployment says r2, nothing more restarts.
    serving_r2 = replace(SERVING_R1, runs={"1": "r2"})
    assert run(b, Resolved(stable="1", runs={("clf", "1"): "r2"}), serving_r2).reexports == {}


def test_nothing_restarts_when_the_registry_cannot_tell_or_the_deployment_predates_runs() -> None:
    b = md()
    run(b, Resolved(stable="1", runs={("clf", "1"): "r1"}), SERVING_R1)
    unknown = run(b, Resolved(stable="1"), SERVING_R1)  # MLflow unreachable: what the Deployment says stays
    assert unknown.reexports == {} and triton(unknown, "1")["metadata"]["annotations"] == {MODEL_RUN: "r1"}
    older = run(b, Resolved(stable="1", runs={("clf", "1"): "r2"}), EVERYTHING_READY)  # written with no run on it
    assert older.reexports == {} and triton(older, "1")["metadata"]["annotations"] == {MODEL_RUN: "r2"}


def test_only_the_version_registered_again_restarts() -> None:
    b = md(canary=CANARY)
    runs = {("clf", "1"): "r1", ("clf", "2"): "c1"}
    serving = replace(EVERYTHING_READY, runs={"1": "r1", "2": "c1"})
    run(b, Resolved(stable="1", runs=runs), serving)
    run(b, Resolved(stable="1", canary="2", runs=runs), serving)
    p = run(b, Resolved(stable="1", canary="2", runs={**runs, ("clf", "2"): "c2"}), serving)
    assert p.reexports == {"clf-v2": "c2"}
    assert triton(p, "1")["metadata"]["annotations"] == {MODEL_RUN: "r1"}

"""A route table's YAML is written once per content: the passes of a rollout whose table has not changed reuse it,
and the texts kept stay within their bound."""

from __future__ import annotations

from datetime import timedelta

from kubeforge.operators.deployment.rollout import Plan, Resolved
from kubeforge.operators.deployment.routetext import Texts
from tests.unit.operators.test_rollout_drift import TRACKED
from tests.unit.operators.test_rollout_plan import CANARY, PASS, T0, md, routes, run


def text(p: Plan) -> str:
    return next(o for o in p.apply if o["kind"] == "ConfigMap")["data"]["routes.yaml"]


def test_a_pass_whose_table_has_not_changed_reuses_its_text_and_a_step_writes_the_new_one() -> None:
    body = md(canary=CANARY, monitoring={"drift": {}})
    resolved = Resolved(stable="1", canary="2", baselines={("clf", v): TRACKED for v in ("1", "2")})
    run(body, resolved)
    first = run(body, resolved)  # the canary's first step: 20 %
    again = run(body, resolved, results=PASS, now=T0 + timedelta(seconds=5))  # a clock pass within the step
    assert text(again) is text(first), "the same text object: not written again"
    assert {v["role"]: v["weight"] for v in routes(again)["versions"]} == {"stable": 80, "canary": 20}

    later = run(body, resolved, results=PASS, now=T0 + timedelta(seconds=11))  # the step's pause is over
    assert {v["role"]: v["weight"] for v in routes(later)["versions"]} == {"stable": 40, "canary": 60}
    assert text(later) is not text(first)


def test_the_texts_kept_stay_within_their_bound_newest_first() -> None:
    texts = Texts(max_bytes=4000)
    tables = [
        {"models": {f"model-{i}": {"versions": [{"version": f"{i}.{n}", "weight": 100} for n in range(20)]}}}
        for i in range(12)
    ]
    written = [texts.text(table) for table in tables]
    assert texts.size <= 4000 < sum(map(len, written))
    assert texts.text(tables[-1]) is written[-1], "the newest is kept"
    assert texts.text(tables[0]) is not written[0] and texts.text(tables[0]) == written[0], "the oldest written anew"

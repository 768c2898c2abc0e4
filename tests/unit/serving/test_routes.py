"""Route table parsing and version choice."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from kubeforge.core import yamltext
from kubeforge.serving.routes import RouteTable, compile_table

URL = "http://triton:8000"


def route_table(*versions: dict, **extra) -> RouteTable:
    return RouteTable.model_validate({"models": {"clf": {"versions": list(versions), **extra}}})


def v(version: str, role: str, **kw) -> dict:
    return {"version": version, "role": role, "url": URL, **kw}


def test_weighted_choice_follows_weights():
    routes = compile_table(route_table(v("1", "stable", weight=3), v("2", "canary", weight=1)), {})
    random.seed(3)
    picks = [routes["clf"].pick().version for _ in range(4000)]
    assert 900 < picks.count("2") < 1100


def test_sticky_values_always_pick_the_same_version_and_spread_over_both():
    routes = compile_table(route_table(v("1", "stable", weight=50), v("2", "canary", weight=50)), {})
    route = routes["clf"]
    first = {f"u{i}": route.pick(f"u{i}").version for i in range(400)}
    assert all(route.pick(k).version == want for k, want in first.items())
    assert 120 < list(first.values()).count("2") < 280


def test_reload_keeps_readiness_and_schema_of_unchanged_versions():
    old = compile_table(route_table(v("1", "stable", weight=1)), {})
    target = old["clf"].stable
    target.mark(URL, False)
    target.schema = "cached"
    known = {t.key: t for r in old.values() for t in r.versions.values()}
    new = compile_table(route_table(v("1", "stable", weight=9), v("2", "canary", weight=1)), known)
    assert new["clf"].stable is target and not target.ready and target.schema == "cached"
    assert new["clf"].canary is not None and new["clf"].canary.schema is None


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ([v("1", "canary", weight=1)], "exactly one stable"),
        ([v("1", "stable", weight=1), v("2", "canary"), v("3", "canary")], "at most one canary"),
        ([v("1", "stable", weight=1), v("1", "canary", weight=1)], "appears twice"),
        ([v("1", "stable", weight=0)], "weights are all 0"),
        ([v("1", "stable", weight=1), v("2", "shadow", weight=5)], "shadows get a mirror"),
        ([v("1", "stable", weight=1, url="triton:8000")], "url"),
        ([v("1", "stable", weight=1, drift={"features": ["f0"], "baseline": '[{"name": "f0"}]'})], "0.edges"),
        ([v("1", "stable", weight=1, drift={"features": ["f0"], "baseline": "f0: 1"})], "feature histograms"),
    ],
)
def test_malformed_tables_are_refused(versions, message):
    with pytest.raises(ValidationError, match=message):
        RouteTable.model_validate({"models": {"clf": {"versions": versions}}})
    with pytest.raises(ValidationError):
        RouteTable.parse("models: {clf: {versions: [], bogus: 1}}")


def test_a_baseline_of_yaml_numbers_as_an_earlier_release_wrote_it_reads_as_the_json_text_written_now() -> None:
    """Each version's baseline is kept as one JSON text (far cheaper to write and read than YAML numbers); a table
    written before, with the histograms as YAML lists, is still read, to the same baseline."""
    histogram = {"name": "f0", "edges": [-1.5, 0.0, 2.25e-05], "counts": [3, 4], "mean": 0.5, "std": 0.25}
    drift = {"features": ["f0"], "baseline": [histogram]}
    older = yamltext.dump({"models": {"clf": {"versions": [v("1", "stable", weight=1, drift=drift)]}}})
    assert "- -1.5" in older  # the histogram's numbers in the YAML

    table = RouteTable.parse(older)
    read = table.models["clf"].versions[0].drift
    assert read is not None and read.histograms() == [histogram]
    written = yamltext.load(yamltext.dump(table.to_wire()))
    assert json.loads(written["models"]["clf"]["versions"][0]["drift"]["baseline"]) == [histogram]
    assert RouteTable.model_validate(written) == table


def test_stable_answers_are_compared_with_the_canary_at_its_percent() -> None:
    from kubeforge.serving.routes import RouteTable, compile_table

    table = RouteTable.model_validate(
        {
            "models": {
                "m": {
                    "versions": [
                        {"version": "1", "role": "stable", "url": "http://a:1", "weight": 50},
                        {"version": "2", "role": "canary", "url": "http://b:1", "weight": 50, "percent": 100},
                    ]
                }
            }
        }
    )
    route = compile_table(table, {})["m"]
    assert route.mirrors(route.stable) == [route.canary]
    assert route.mirrors(route.canary) == [], "the canary's own answers have nothing to be compared with"


def test_replicas_take_turns_and_one_known_down_is_left_out_until_it_is_back():
    a, b, c = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
    target = compile_table(route_table(v("1", "stable", weight=1, url=a, endpoints=[a, b, c])), {})["clf"].stable
    assert sorted(target.address() for _ in range(300)) == sorted([a, b, c] * 100)
    assert target.mark(b, False) and not target.mark(b, False), "news once"
    assert {target.address() for _ in range(30)} == {a, c} and target.ready
    # One request tries each replica at most once, a known-down one last.
    tried: list[str] = []
    while (url := target.address(tried)) is not None:
        tried.append(url)
    assert sorted(tried[:2]) == [a, c] and tried[2:] == [b]
    target.mark(a, False)
    target.mark(c, False)
    assert not target.ready and target.address() == b, "every replica down: still one to try"
    target.mark(c, True)
    assert target.ready and {target.address() for _ in range(10)} == {c}


def test_a_reload_keeps_what_is_known_of_replicas_still_named():
    a, b, c = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
    old = compile_table(route_table(v("1", "stable", weight=1, url=a, endpoints=[a, b])), {})["clf"].stable
    old.mark(a, False)
    old.mark(b, False)
    known = {old.key: old}
    new = compile_table(route_table(v("1", "stable", weight=1, url=a, endpoints=[a, c])), known)["clf"].stable
    assert new is old and new.down == {a} and new.ready, "b gone from the table, c new and not known down"
    single = compile_table(route_table(v("1", "stable", weight=1, url=a)), known)["clf"].stable
    assert single is old and single.replicas == (a,) and not single.ready and single.address() == a
    # Its first replica gone, the version is the same one (its windows kept) at its other address, whose schema
    # is asked for again.
    old.schema = "cached"
    moved = compile_table(route_table(v("1", "stable", weight=1, url=c)), known)["clf"].stable
    assert moved is old and moved.schema is None and moved.ready and moved.address() == c

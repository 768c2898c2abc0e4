"""The selector reader the live monitoring checks rely on (tests/promql.py)."""

from __future__ import annotations

import re

from kubeforge.monitoring import dashboards, rules
from tests.promql import selectors


def test_reads_selectors_through_functions_aggregations_matching_ranges_and_strings() -> None:
    expr = (
        'sum by (namespace, le) (label_replace(rate(a_total{code=~"5..", x="{y}"}[5m]), "m", "$1", "model", "(.+)"))'
        "\nor\n0 * max without (pod) (b) / on (namespace) group_left () c:recorded offset 15m > bool 1e3"
        '\nand histogram_quantile(0.99, d_bucket) unless {__name__="e"}'
    )
    assert selectors(expr) == ['a_total{code=~"5..", x="{y}"}', "b", "c:recorded", "d_bucket", '{__name__="e"}']


def test_every_rule_and_dashboard_query_reads_metrics_by_name() -> None:
    for where, query in rules.all_queries() + dashboards.all_queries():
        found = selectors(query)
        assert found, where
        names = [s.split("{")[0] for s in found]
        assert all(re.fullmatch(r"[a-zA-Z_:][\w:]*", n) for n in names), (where, found)
        assert not {"sum", "max", "rate", "by", "on", "and", "or", "vector"} & set(names), (where, found)

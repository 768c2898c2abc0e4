"""Vector selectors of PromQL expressions, for tests that check each query reads series that exist.

Prometheus' own parser is not reachable from Python and the Prometheus packaged here has no
parse API, so this reads the subset kubeforge's rules and dashboards use: selectors with or
without matchers, functions, aggregations with by/without, vector matching with
on/ignoring/group_left/group_right, ranges, offsets, strings and numbers.
"""

from __future__ import annotations

import re

_STRING = r'"(?:[^"\\]|\\.)*"'
_MATCHERS = rf"\{{(?:[^{{}}\"]|{_STRING})*\}}"
_NAME = r"[a-zA-Z_:][\w:]*"
_TOKEN = re.compile(
    rf"""(?P<string>{_STRING})
    |(?P<clause>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))
    |(?P<window>\[[^\]]*\]|\boffset\s+\w+)
    |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<selector>(?:{_NAME}\s*)?{_MATCHERS}|{_NAME})
    |(?P<other>.)""",
    re.X | re.S,
)
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """Each vector selector in expr, as written ("up", 'rate_total{code=~"5.."}'), in order, without repeats."""
    found: list[str] = []
    for match in _TOKEN.finditer(expr):
        selector = match.group("selector")
        if selector is None or selector.lower() in _KEYWORDS:
            continue
        called = re.match(r"\s*(\(|(by|without)\s*\()", expr[match.end() :])
        if called and "{" not in selector:  # a function or an aggregation
            continue
        selector = re.sub(r"\s+(?=\{)", "", selector)
        if selector not in found:
            found.append(selector)
    return found

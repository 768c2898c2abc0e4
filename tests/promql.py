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
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def selectors(expr: str) -> list[str]:
    """Each vector selector in expr, as written ("up", 'rate_total{code=~"5.."}'), in order, without repeats."""
    found: list[str] = []
    for match in _TOKEN.finditer(expr):
        selector = match.group("selector")
        if selector is None:
            continue
        name, brace, matchers = selector.partition("{")
        if name.strip().lower() in _KEYWORDS:  # "unless {...}": an operator, then a selector without a name
            if not brace:
                continue
            selector = brace + matchers
        called = re.match(r"\s*(\(|(by|without)\s*\()", expr[match.end() :])
        if called and "{" not in selector:  # a function or an aggregation
            continue
        selector = re.sub(r"\s+(?=\{)", "", selector)
        if selector not in found:
            found.append(selector)
    return found


def unfed(prometheus: str, queries: list[tuple[str, str]]) -> list[str]:
    """What is wrong with each (where, PromQL) against the live Prometheus at URL prometheus, as problems to list.

    A query must evaluate, and return series; where it returns none, each of its selectors that selects
    nothing must read a metric that is exported, by labels its series carry: then only a label value that
    does not occur now (no TrainingJob has failed, say) keeps it empty. A name or label that nothing
    exports is a problem.
    """
    problems = []
    for where, expr in queries:
        answer = _get(prometheus, "query", query=expr)
        if answer["status"] != "success":
            problems.append(f"{where}: {answer.get('error')}")
            continue
        if answer["data"]["result"]:
            continue
        for selector in selectors(expr):
            if _get(prometheus, "query", query=selector)["data"]["result"]:
                continue
            name = selector.split("{")[0]
            exported = _get(prometheus, "series", **{"match[]": name})["data"] if name else []
            if not exported:
                problems.append(f"{where}: no series of {name or selector}")
                continue
            carried = {label for series in exported for label in series}
            used = re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector.partition("{")[2])
            problems += [f"{where}: {name} has no label {label}" for label in used if label not in carried]
    return problems


def _get(prometheus: str, api: str, **params: str) -> dict:
    import httpx

    return httpx.get(f"{prometheus}/api/v1/{api}", params=params, timeout=30).json()


def still_unfed(prometheus: str, queries: list[tuple[str, str]], timeout: float = 60) -> list[str]:
    """unfed(), asked again every few seconds until it finds nothing or timeout seconds passed: rates need two
    scrapes, and a fresh series one."""
    import time

    deadline = time.monotonic() + timeout
    while (problems := unfed(prometheus, queries)) and time.monotonic() < deadline:
        time.sleep(3)
    return problems

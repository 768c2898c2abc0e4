"""Write the Helm chart's generated parts from their sources (`make chart`), or say which are stale.

- templates/crds/*.yaml: crds/*.yaml as templates, switched by ``crds.install``, kept on uninstall with
  ``crds.keep``;
- files/prometheus/kubeforge-rules.yaml and files/grafana/*.json: monitoring/, read by the chart as data;
- README.md: the values table, from the ``# --`` comments in values.yaml.

Usage: ``python -m kubeforge.chartgen [--check] [REPO]``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path("charts/kubeforge")

_CRD_HEAD = """\
{{- if .Values.crds.install }}
# Generated from crds/%(name)s by `make chart`. Do not edit.
"""
_CRD_META = """\
  annotations:
    {{- if .Values.crds.keep }}
    helm.sh/resource-policy: keep
    {{- end }}
  labels:
    {{- include "kubeforge.labels" . | nindent 4 }}
"""


def crd_template(text: str, name: str) -> str:
    """A CRD's YAML as a chart template: its metadata.labels replaced by the chart's, `{{` escaped."""
    out: list[str] = []
    in_metadata = in_labels = False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if in_labels and line.startswith("    "):
            continue
        in_labels = False
        if not line.startswith(" "):
            in_metadata = line == "metadata:"
        if in_metadata and line == "  labels:":
            in_labels = True
            continue
        out.append(line.replace("{{", '{{ "{{" }}'))
        if in_metadata and line.startswith("  name: "):
            out.append(_CRD_META.rstrip("\n"))
    return _CRD_HEAD % {"name": name} + "\n".join(out) + "\n{{- end }}\n"


def _rows(values_text: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key with a ``# --`` comment, in file order."""
    data = yaml.safe_load(values_text) or {}
    rows = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            path = [k for _, k in stack]
            value: Any = data
            for k in path:
                value = value[k]
            rows.append((".".join(path), _type(value), json.dumps(value, separators=(", ", ": ")), " ".join(pending)))
            pending = None
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), "null"
    )


def readme(chart: Path) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = (chart / "values.yaml").read_text()
    table = "\n".join(
        f"| `{key}` | {type_} | `{default}` | {_cell(desc)} |" for key, type_, default, desc in _rows(values)
    )
    head = (chart / "README.head.md").read_text()
    return (
        f"<!-- Generated from README.head.md and values.yaml by `make chart`. Do not edit. -->\n"
        f"# kubeforge chart {meta['version']} (kubeforge {meta['appVersion']})\n\n{head.strip()}\n\n"
        f"## Values\n\n| Key | Type | Default | Description |\n|---|---|---|---|\n{table}\n"
    )


def generated(repo: Path) -> dict[Path, str]:
    """Every generated file of the chart (path relative to repo) and the content it must have."""
    chart = repo / CHART
    files: dict[Path, str] = {}
    for crd in sorted((repo / "crds").glob("*.yaml")):
        files[CHART / "templates" / "crds" / crd.name] = crd_template(crd.read_text(), crd.name)
    rules = repo / "monitoring" / "prometheus" / "kubeforge-rules.yaml"
    files[CHART / "files" / "prometheus" / rules.name] = rules.read_text()
    for dashboard in sorted((repo / "monitoring" / "grafana").glob("*.json")):
        files[CHART / "files" / "grafana" / dashboard.name] = dashboard.read_text()
    files[CHART / "README.md"] = readme(chart)
    return files


def _owned_dirs() -> list[Path]:
    return [CHART / "templates" / "crds", CHART / "files" / "prometheus", CHART / "files" / "grafana"]


def stale(repo: Path) -> list[str]:
    """What `make chart` would change: files that differ, are missing, or are left over; and a Chart.yaml whose
    version is not the project's."""
    from . import __version__

    want = generated(repo)
    problems = [str(p) for p, text in want.items() if not (repo / p).is_file() or (repo / p).read_text() != text]
    for folder in _owned_dirs():
        problems += [str(p.relative_to(repo)) for p in (repo / folder).glob("*") if p.relative_to(repo) not in want]
    meta = yaml.safe_load((repo / CHART / "Chart.yaml").read_text())
    if (str(meta["version"]), str(meta["appVersion"])) != (__version__, __version__):
        problems.append(f"{CHART / 'Chart.yaml'}: version and appVersion must be {__version__}")
    return problems


def write(repo: Path) -> list[Path]:
    for folder in _owned_dirs():
        for old in (repo / folder).glob("*"):
            old.unlink()
    written = []
    for path, text in generated(repo).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    repo = Path(args[0]) if args else Path.cwd()
    if check:
        problems = stale(repo)
        for p in problems:
            print(f"stale: {p}", file=sys.stderr)
        if problems:
            print("run `make chart` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    for path in write(repo):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Generate CustomResourceDefinitions from the pydantic API models.

The models are the single source of truth; this module turns their JSON Schema
(draft 2020-12, with $refs) into the structural OpenAPI v3 schema the API server
wants: everything inlined, a type on every node, no null types, no keywords
Kubernetes rejects (additionalProperties: false, uniqueItems, const, title).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .meta import CATEGORY, GROUP, VERSION, Resource
from .validation import KINDS as _BY_NAME

KINDS: tuple[type[Resource], ...] = tuple(_BY_NAME.values())

# Keywords an OpenAPI v3 structural schema may carry; the rest of JSON Schema is dropped.
_KEEP = {
    "type", "description", "properties", "required", "items", "additionalProperties", "enum",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "format", "default", "nullable", "oneOf", "anyOf", "allOf", "not",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-map-type",
}  # fmt: skip
_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password"}


class _Converter:
    def __init__(self, defs: dict[str, Any]):
        self.defs = defs

    def node(self, schema: dict[str, Any]) -> dict[str, Any]:
        schema = dict(schema)
        if "$ref" in schema:
            target = self.defs[schema.pop("$ref").split("/")[-1]]
            # Field-level keywords (description, default) win over the referenced model's.
            schema = {**target, **{k: v for k, v in schema.items()}}
        if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
            options = [o for o in schema["anyOf"] if o.get("type") != "null"]
            if len(options) == 1:  # Optional[X] -> X, optionality is expressed by `required`.
                rest = {k: v for k, v in schema.items() if k != "anyOf"}
                return self.node({**options[0], **rest})
        out: dict[str, Any] = {}
        if schema.get("x-kubernetes-int-or-string"):
            # The one shape the API server accepts (controller-gen writes Quantity the same way);
            # a pattern on the node applies to string values only.
            out["description"] = schema.get("description", "")
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            patterns = [o["pattern"] for o in schema.get("anyOf", []) if "pattern" in o]
            if patterns:
                out["pattern"] = patterns[0]
            out["x-kubernetes-int-or-string"] = True
            if "default" in schema:
                out["default"] = schema["default"]
            return out
        if "const" in schema:
            schema["enum"] = [schema.pop("const")]
        for key, value in schema.items():
            if key not in _KEEP:
                continue
            if key == "properties":
                out[key] = {name: self.node(sub) for name, sub in value.items()}
            elif key == "items":
                out[key] = self.node(value)
            elif key == "additionalProperties":
                if isinstance(value, dict):
                    out[key] = self.node(value)
            elif key in ("oneOf", "anyOf", "allOf"):
                out[key] = [self._validation_only(v) for v in value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out[key.replace("exclusiveM", "m")] = value
                out[key] = True
            elif key == "format" and value not in _FORMATS:
                continue
            elif key == "default" and value in (None, ""):
                continue  # no-op defaults; the 1.20 API server also misreads "" as null
            else:
                out[key] = value
        if "type" not in out and "properties" in out:
            out["type"] = "object"
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
        first: dict[str, Any] = {k: out.pop(k) for k in ("type", "description") if k in out}
        return {**first, **out}

    def _validation_only(self, schema: dict[str, Any]) -> dict[str, Any]:
        """oneOf/anyOf branches may only validate values (required, enum), never declare types."""
        out: dict[str, Any] = {}
        if "required" in schema:
            out["required"] = schema["required"]
        if "properties" in schema:
            out["properties"] = {k: self._validation_only(v) for k, v in schema["properties"].items()}
        if "enum" in schema:
            out["enum"] = schema["enum"]
        return out


def openapi_schema(kind: type[Resource]) -> dict[str, Any]:
    """The structural schema of one kind: spec and status, metadata left to the API server."""
    full = kind.model_json_schema(by_alias=True, mode="validation")
    conv = _Converter(full.get("$defs", {}))
    props = full["properties"]
    assert kind.__doc__ is not None, f"{kind.__name__} has no docstring, the description of its CRD"
    return {
        "type": "object",
        "description": kind.__doc__.strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubeforge.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind.__name__},
            "metadata": {"type": "object"},
            "spec": conv.node(props["spec"]),
            "status": conv.node(props["status"]),
        },
    }


def crd(kind: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a plain dict."""
    info = kind.crd
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name, "labels": {"app.kubernetes.io/part-of": "kubeforge"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.__name__,
                "listKind": f"{kind.__name__}List",
                "plural": info.plural,
                "singular": kind.__name__.lower(),
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Repeated sub-schemas are written out in full: no &anchors in a file people read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


HEADER = "# Generated from the pydantic models in src/kubeforge/api by `make crds`. Do not edit.\n"


def render(kind: type[Resource]) -> str:
    """The YAML text of a kind's CRD file, exactly as committed under crds/."""
    return HEADER + yaml.dump(crd(kind), Dumper=_NoAliases, sort_keys=False, width=120)


def filename(kind: type[Resource]) -> str:
    return f"{GROUP}_{kind.crd.plural}.yaml"


def write(directory: Path) -> list[Path]:
    """Write every CRD file into directory; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = directory / filename(kind)
        path.write_text(render(kind))
        paths.append(path)
    return paths

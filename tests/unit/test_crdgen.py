"""The CRDs are generated from the API models; these tests keep the two in step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubeforge.api import crdgen

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.__name__)
def test_committed_crd_is_current(kind: Any) -> None:
    committed = (CRDS / crdgen.filename(kind)).read_text()
    assert committed == crdgen.render(kind), f"crds/{crdgen.filename(kind)} is stale: run make crds"


def _walk(schema: dict[str, Any], path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.__name__)
def test_every_field_is_documented_and_structural(kind: Any) -> None:
    schema = crdgen.openapi_schema(kind)
    for part in ("spec", "status"):
        for path, node in _walk(schema["properties"][part], part):
            if path.endswith("[]") or path.endswith("{}"):
                continue  # list items and map values are described by their field
            assert node.get("description"), f"{kind.__name__}.{path} has no description (kubectl explain shows it)"
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
            for banned in ("$ref", "$defs", "const", "title", "uniqueItems"):
                assert banned not in node, f"{path} carries {banned}, which a structural schema rejects"
            if node.get("additionalProperties") is False:
                pytest.fail(f"{path}: additionalProperties: false is not allowed in a CRD")


def test_crd_names_and_columns() -> None:
    by_kind = {k.__name__: crdgen.crd(k) for k in crdgen.KINDS}
    shorts = {name: crd["spec"]["names"]["shortNames"] for name, crd in by_kind.items()}
    assert shorts == {"TrainingJob": ["tj"], "ModelDeployment": ["md"], "FeatureView": ["fv"]}
    for crd in by_kind.values():
        version = crd["spec"]["versions"][0]
        assert crd["spec"]["names"]["categories"] == ["kubeforge"]
        assert version["subresources"] == {"status": {}}
        assert "Ready" in [c["name"] for c in version["additionalPrinterColumns"]]
    md_columns = [c["name"] for c in by_kind["ModelDeployment"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Stable", "Canary", "Weight"} <= set(md_columns)


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    for kind in crdgen.KINDS:
        conditions = crdgen.openapi_schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert {"type", "status", "reason", "lastTransitionTime"} <= set(conditions["items"]["required"])

"""The GitOps bundles under platform/: Argo CD, Flux and the production kustomize overlay.

Each file parses; the Application and the HelmRelease install this repository's chart at this version with values
the chart has; the Argo CD component wires the health check for every kind; the overlay's own objects validate
against Kubernetes' schemas, and the whole overlay, chart included, renders with kubectl's kustomize and helm when
both are on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeforge import __version__
from kubeforge.api import crdgen
from kubeforge.featurestore.config import StoreSettings
from kubeforge.local import binaries
from kubeforge.operators import settings
from tests.conftest import REPO

PLATFORM = REPO / "platform"
CHART = REPO / "charts" / "kubeforge"
PRODUCTION = PLATFORM / "kustomize" / "production"
K8S_VERSION = "1.30"
REPO_URL = "https://github.com/kubeforge/kubeforge.git"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in load(path) if d["kind"] == kind]
    return doc


def chart_values() -> dict[str, Any]:
    if not (CHART / "values.yaml").exists():
        pytest.skip("charts/kubeforge/values.yaml is not written yet: values keys cannot be checked")
    return yaml.safe_load((CHART / "values.yaml").read_text())


def unknown_keys(values: dict[str, Any], known: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of values that the chart's values.yaml does not have (maps are compared key by key)."""
    out = []
    for key, value in values.items():
        if key not in known:
            out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(known[key], dict) and known[key]:
            out += unknown_keys(value, known[key], f"{prefix}{key}.")
    return out


def test_every_yaml_file_parses() -> None:
    files = sorted(PLATFORM.rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        docs = load(path)
        assert docs, path
        if path.name == "values.yaml":
            continue  # Helm values, not an object
        for doc in docs:
            assert isinstance(doc, dict) and "kind" in doc and "apiVersion" in doc, path


def test_chart_is_where_the_bundles_point() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == "kubeforge"
    assert chart["appVersion"] == __version__


# -- Argo CD --------------------------------------------------------------------------------------------------


def test_argocd_application_installs_the_chart() -> None:
    app = one(PLATFORM / "argocd" / "application.yaml", "Application")
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    source = app["spec"]["source"]
    assert source["repoURL"] == REPO_URL
    assert source["targetRevision"] == f"v{__version__}"
    assert (REPO / source["path"] / "Chart.yaml").exists()
    options = app["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in options, "the CRDs are too large for client-side apply's annotation"
    assert "CreateNamespace=true" in options
    assert app["spec"]["destination"]["namespace"] == "kubeforge"
    assert unknown_keys(source["helm"]["valuesObject"], chart_values()) == []


def test_argocd_component_wires_the_health_check_of_every_kind() -> None:
    component = load(PLATFORM / "argocd" / "kustomization.yaml")[0]
    assert component["kind"] == "Component"
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    (generator,) = component["configMapGenerator"]
    assert generator["name"] == "argocd-cm"
    assert generator["behavior"] == "merge"
    assert generator["options"]["disableNameSuffixHash"] is True
    files = dict(f.split("=", 1) for f in generator["files"])
    kinds = {crdgen.crd(k)["spec"]["names"]["kind"] for k in crdgen.KINDS}
    group = {crdgen.crd(k)["spec"]["group"] for k in crdgen.KINDS}.pop()
    assert set(files) == {f"resource.customizations.health.{group}_{kind}" for kind in kinds}
    for path in files.values():
        assert (PLATFORM / "argocd" / path).exists()


# -- Flux -----------------------------------------------------------------------------------------------------


def test_flux_release_installs_the_chart_from_the_repository() -> None:
    source = one(PLATFORM / "flux" / "gitrepository.yaml", "GitRepository")
    assert source["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert source["spec"]["url"] == REPO_URL
    assert source["spec"]["ref"] == {"tag": f"v{__version__}"}
    release = one(PLATFORM / "flux" / "helmrelease.yaml", "HelmRelease")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert (REPO / chart["chart"] / "Chart.yaml").exists()
    ref = chart["sourceRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == ("GitRepository", "kubeforge", "flux-system")
    assert source["metadata"]["namespace"] == "flux-system"
    for phase in ("install", "upgrade"):
        assert release["spec"][phase]["crds"] in {"Create", "CreateReplace"}
    assert release["spec"]["targetNamespace"] == "kubeforge"
    assert unknown_keys(release["spec"]["values"], chart_values()) == []
    kustomization = load(PLATFORM / "flux" / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (PLATFORM / "flux" / resource).exists()


# -- production overlay ---------------------------------------------------------------------------------------


def overlay_objects() -> list[dict[str, Any]]:
    kustomization = load(PRODUCTION / "kustomization.yaml")[0]
    return [doc for r in kustomization["resources"] for doc in load(PRODUCTION / r)]


def test_overlay_installs_the_chart_with_values_it_has() -> None:
    kustomization = load(PRODUCTION / "kustomization.yaml")[0]
    assert kustomization["namespace"] == "kubeforge"
    chart_home = (PRODUCTION / kustomization["helmGlobals"]["chartHome"]).resolve()
    (chart,) = kustomization["helmCharts"]
    assert (chart_home / chart["name"] / "Chart.yaml").exists()
    values = yaml.safe_load((PRODUCTION / chart["valuesFile"]).read_text())
    assert unknown_keys(values, chart_values()) == []


def test_overlay_wires_mlflow_and_redis_into_kubeforge() -> None:
    values = yaml.safe_load((PRODUCTION / "values.yaml").read_text())
    objects = {(o["kind"], o["metadata"]["name"]): o for o in overlay_objects()}
    # MLflow: the chart's tracking URI is the overlay's Service, by a name pods in any namespace resolve.
    service = objects[("Service", "mlflow")]
    port = service["spec"]["ports"][0]["port"]
    assert values["mlflow"]["trackingUri"] == f"http://mlflow.kubeforge.svc:{port}"
    container = objects[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kubeforge/kubeforge-mlflow:{__version__}"
    args = container["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert "--serve-artifacts" in args, "the export step reads artifacts through the server, over REST"
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "kubeforge-mlflow"
    assert "secretKeyRef" in env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]
    assert "MLFLOW_S3_ENDPOINT_URL" in env
    allowed = {h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")}
    assert f"mlflow.kubeforge.svc:{port}" in allowed
    # Redis: the online store URL names the overlay's Service, and kubeforge's settings accept it.
    redis = objects[("Service", "redis")]
    url = values["featureStore"]["onlineStore"]
    assert url == f"redis://redis.kubeforge.svc:{redis['spec']['ports'][0]['port']}/0"
    online = StoreSettings(Path("/var/lib/kubeforge/features"), online=url).repo_config("team-a")["online_store"]
    assert online == {"type": "redis", "connection_string": "redis.kubeforge.svc:6379,db=0"}
    # Materialization Jobs and gateways, in any namespace, may reach Redis.
    policy = objects[("NetworkPolicy", "redis")]
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/managed-by": "kubeforge-operator"} in [p["podSelector"]["matchLabels"] for p in peers]


def test_overlay_images_are_pinned() -> None:
    for obj in overlay_objects():
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", c["image"]
    assert settings.OPERATOR_IMAGE.endswith(f":{__version__}")


def test_overlay_objects_validate_against_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in overlay_objects():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture
def kustomize_helm(tmp_path: Path) -> Path:
    """A directory whose helm kubectl's kustomize runs: the project's helm, whose version it reports as v3
    (kustomize 5.5 refuses helm v4 by its version string alone; `helm template` is the same)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    try:
        helm = binaries.helm(fetch=False)
    except binaries.BinaryNotFound as err:
        pytest.skip(str(err))
    wrapper = tmp_path / "helm"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = version ] && {{ echo v3.17.0; exit 0; }}\nexec "{helm}" "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


def test_overlay_renders_with_the_chart(kustomize_helm: Path) -> None:
    proc = subprocess.run(
        ["kubectl", "kustomize", "--enable-helm", str(PRODUCTION)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PATH": f"{kustomize_helm}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    by_kind = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert {("Deployment", "mlflow"), ("StatefulSet", "redis"), ("Service", "mlflow")} <= by_kind
    assert sum(o["kind"] == "CustomResourceDefinition" for o in rendered) == len(crdgen.KINDS)
    assert all(o["metadata"].get("namespace", "kubeforge") == "kubeforge" for o in rendered)
    (operator,) = [o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] != "mlflow"]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == settings.OPERATOR_IMAGE
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFORGE_MLFLOW_TRACKING_URI"] == "http://mlflow.kubeforge.svc:5000"
    assert env["KUBEFORGE_FEAST_ONLINE_STORE"] == "redis://redis.kubeforge.svc:6379/0"
    assert env["KUBEFORGE_TRAINER_IMAGE"] == settings.TRAINER_IMAGE
    assert env["KUBEFORGE_GATEWAY_IMAGE"] == settings.GATEWAY_IMAGE
    assert env["KUBEFORGE_TRITON_IMAGE"] == settings.TRITON_IMAGE
    assert env["KUBEFORGE_MATERIALIZER_IMAGE"] == settings.OPERATOR_IMAGE
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert obj["apiVersion"].startswith("monitoring.coreos.com/"), obj["kind"]  # Prometheus Operator kinds

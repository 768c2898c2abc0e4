"""The chart installed into a real API server (RBAC authorization on), and the real operator run under the
chart's ServiceAccount: a TrainingJob trains and registers a model, a ModelDeployment serves it, and the
operator is never refused. Then `helm upgrade` and `helm uninstall`.

The local runner plays kubelet for the workloads (trainer, Triton, gateway); the operator's own pod has no
kubelet here, so the operator runs as a process with a kubeconfig holding a token of the chart's
ServiceAccount (TokenRequest API) instead of the admin credentials.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from kubeforge.core import kube
from tests.charts import CHART, helm
from tests.integration.operators.conftest import Operator, wait_for

pytestmark = pytest.mark.integration
GROUP, VERSION = "kubeforge.dev", "v1alpha1"
RELEASE = "kubeforge"
CRDS = ["trainingjobs.kubeforge.dev", "modeldeployments.kubeforge.dev", "featureviews.kubeforge.dev"]
HELM_OWNER = {"meta.helm.sh/release-name": RELEASE}


@dataclass
class Release:
    namespace: str
    admin: client.ApiClient
    admin_kubeconfig: Path
    operator: Operator

    def helm(self, *args: str) -> str:
        return helm(*args, "--namespace", self.namespace, "--kubeconfig", str(self.admin_kubeconfig)).stdout


def _adopt_existing_crds(api: client.ApiClient, namespace: str) -> None:
    """CRDs applied earlier in the test session (kubectl apply -f crds/) become the release's, as an admin adopting
    CRDs into a chart does: helm takes over objects that carry its ownership label and annotations."""
    ext = client.ApiextensionsV1Api(api)
    for name in CRDS:
        try:
            ext.read_custom_resource_definition(name)
        except client.ApiException as err:
            if err.status == 404:
                continue
            raise
        meta = {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {**HELM_OWNER, "meta.helm.sh/release-namespace": namespace},
        }
        ext.patch_custom_resource_definition(name, {"metadata": meta})


def _service_account_kubeconfig(admin_kubeconfig: Path, api: client.ApiClient, namespace: str, sa: str) -> Path:
    """The admin kubeconfig's server and CA with a token of the ServiceAccount (TokenRequest) as the user."""
    request = {"spec": {"audiences": [], "expirationSeconds": 3600 * 4}}
    token = client.CoreV1Api(api).create_namespaced_service_account_token(sa, namespace, request).status.token
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = sa
    path = admin_kubeconfig.parent / f"{sa}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def release(controlplane, mlflow, runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    admin = kube.api_client(controlplane.kubeconfig)
    namespace = f"kubeforge-system-{os.urandom(3).hex()}"
    _adopt_existing_crds(admin, namespace)
    args = ["install", RELEASE, str(CHART), "--create-namespace", "--set", f"mlflow.trackingUri={mlflow.url}"]
    helm(*args, "--namespace", namespace, "--kubeconfig", str(controlplane.kubeconfig))
    wait_for(lambda: _established(admin), 60, "the chart's CRDs established")
    sa_kubeconfig = _service_account_kubeconfig(controlplane.kubeconfig, admin, namespace, RELEASE)
    log_dir = tmp_path_factory.mktemp("chart-operator")
    operator = Operator(sa_kubeconfig, mlflow.url, log_dir / "operator.log")
    operator.start()
    try:
        yield Release(namespace, admin, controlplane.kubeconfig, operator)
    finally:
        operator.stop()


def _established(api: client.ApiClient) -> bool:
    ext = client.ApiextensionsV1Api(api)
    crds = [ext.read_custom_resource_definition(name) for name in CRDS]
    return all(any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []) for crd in crds)


def refused(operator: Operator) -> bool:
    """Fail at once (not an AssertionError, which wait_for retries) when the API server refused the operator
    anything: its log names each refusal ("403 Forbidden", `... is forbidden: User ...`, APIForbiddenError)."""
    forbidden = [line for line in operator.log_text().splitlines() if "forbidden" in line.lower()]
    if forbidden:
        pytest.fail("the chart's RBAC refused the operator:\n" + "\n".join(forbidden[:5]))
    return False


def _custom(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def _ready(api: client.ApiClient, namespace: str, plural: str, name: str) -> bool:
    conditions = (_custom(api, namespace, plural, name).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_install_creates_the_operator_rbac_crds_and_dashboards(release: Release) -> None:
    ns, api = release.namespace, release.admin
    apps, core, rbac = client.AppsV1Api(api), client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    dep = apps.read_namespaced_deployment(RELEASE, ns)
    assert dep.spec.template.spec.service_account_name == RELEASE
    core.read_namespaced_service_account(RELEASE, ns)
    core.read_namespaced_service(f"{RELEASE}-metrics", ns)
    for role in (RELEASE, f"{RELEASE}-discovery", f"{RELEASE}-edit", f"{RELEASE}-view"):
        rbac.read_cluster_role(role)
    rbac.read_cluster_role_binding(RELEASE)
    dashboards = core.list_namespaced_config_map(ns, label_selector="grafana_dashboard=1").items
    assert len(dashboards) == len(list((CHART / "files" / "grafana").glob("*.json")))
    for name in CRDS:
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"


def test_the_service_account_gets_nothing_beyond_its_role(release: Release) -> None:
    """The operator's credentials really are the ServiceAccount's: reading Secrets is refused."""
    sa_api = kube.api_client(release.operator.kubeconfig)
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(sa_api).list_namespaced_secret(release.namespace)
    assert refused.value.status == 403
    client.BatchV1Api(sa_api).list_job_for_all_namespaces()  # and what it needs is granted


@pytest.mark.timeout(900)
def test_under_the_charts_service_account_a_model_is_trained_and_served(
    release: Release, runner_namespace: str, tmp_path: Path
) -> None:
    from sklearn.datasets import load_breast_cancer

    ns, api, custom = runner_namespace, release.admin, client.CustomObjectsApi(release.admin)
    data = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_")).to_csv(data, index=False)
    model = f"chart-{ns}"
    tj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "cancer"},
        "spec": {
            "model": {"name": model, "architecture": "logistic", "hyperparameters": {"epochs": 3}},
            "dataset": {"uri": str(data), "target": "target"},
            "register": {"alias": "champion"},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", tj)

    def registered() -> str | None:
        refused(release.operator)
        st = _custom(api, ns, "trainingjobs", "cancer").get("status") or {}
        assert st.get("phase") != "Failed", st
        return (st.get("mlflow") or {}).get("modelVersion")

    assert wait_for(registered, 300, "the TrainingJob's registered model version") == "1"

    md = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "cancer"},
        "spec": {"model": {"name": model, "alias": "champion"}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md)
    wait_for(lambda: refused(release.operator) or _ready(api, ns, "modeldeployments", "cancer"), 240, "Ready")
    st = _custom(api, ns, "modeldeployments", "cancer")["status"]
    assert st["stableVersion"] == "1"
    gateway = st["url"].split("/v2/")[0]
    assert httpx.get(f"{gateway}/v2/models/cancer/ready", timeout=5).status_code == 200

    # The operator deletes the children of a ModelDeployment that is gone: also allowed.
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", "cancer")
    gone = lambda: not client.AppsV1Api(api).list_namespaced_deployment(ns).items  # noqa: E731
    wait_for(gone, 60, "the ModelDeployment's Deployments deleted by the operator")
    refused(release.operator)


def test_upgrade_keeps_the_release_and_the_resources_running(release: Release, runner_namespace: str) -> None:
    ns, api = runner_namespace, release.admin
    tj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "kept"},
        "spec": {"model": {"name": "kept", "architecture": "logistic"}, "dataset": {"uri": "/x.csv", "target": "y"}},
    }
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", tj)
    wait_for(lambda: (_custom(api, ns, "trainingjobs", "kept").get("status") or {}).get("phase"), 60, "a status")
    sa_before = client.CoreV1Api(api).read_namespaced_service_account(RELEASE, release.namespace).metadata.uid
    release.helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "operator.verbose=true")
    assert (
        "--verbose"
        in client.AppsV1Api(api)
        .read_namespaced_deployment(RELEASE, release.namespace)
        .spec.template.spec.containers[0]
        .args
    )
    # The same objects, updated in place: the ServiceAccount (and the operator's token) and the resources stay.
    assert client.CoreV1Api(api).read_namespaced_service_account(RELEASE, release.namespace).metadata.uid == sa_before
    assert _custom(api, ns, "trainingjobs", "kept")["metadata"]["uid"] == created["metadata"]["uid"]
    assert "REVISION: 2" in release.helm("status", RELEASE)
    sa_api = kube.api_client(release.operator.kubeconfig)
    client.BatchV1Api(sa_api).list_job_for_all_namespaces()


def test_uninstall_removes_everything_but_the_crds_and_the_resources(release: Release, runner_namespace: str) -> None:
    api, ns = release.admin, release.namespace
    tj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "survivor"},
        "spec": {"model": {"name": "s", "architecture": "logistic"}, "dataset": {"uri": "/x.csv", "target": "y"}},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, runner_namespace, "trainingjobs", tj)
    release.operator.stop()
    release.helm("uninstall", RELEASE, "--wait")
    assert client.AppsV1Api(api).list_namespaced_deployment(ns).items == []
    assert [s.metadata.name for s in client.CoreV1Api(api).list_namespaced_service_account(ns).items] == []
    assert client.CoreV1Api(api).list_namespaced_config_map(ns, label_selector="grafana_dashboard=1").items == []
    selector = f"app.kubernetes.io/instance={RELEASE}"
    rbac = client.RbacAuthorizationV1Api(api)
    assert rbac.list_cluster_role(label_selector=selector).items == []
    assert rbac.list_cluster_role_binding(label_selector=selector).items == []
    ext = client.ApiextensionsV1Api(api)
    assert sorted(
        c.metadata.name for c in ext.list_custom_resource_definition().items if c.spec.group == GROUP
    ) == sorted(CRDS)
    assert _custom(api, runner_namespace, "trainingjobs", "survivor")["metadata"]["name"] == "survivor"

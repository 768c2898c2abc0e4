"""PrometheusRule objects loaded into the local platform's Prometheus (Debian's), as the Prometheus Operator does.

The runner's rule sync runs here in the test process, against the session's API server and a Prometheus
started as `kubeforge up` starts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from kubeforge.core import kube
from kubeforge.local import monitoring
from kubeforge.local.processes import free_port, terminate
from kubeforge.local.runner.rules import RuleSync
from kubeforge.monitoring import rules
from tests.conftest import prometheus_rules_kind
from tests.integration.operators.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(controlplane) -> client.ApiClient:
    return kube.api_client(controlplane.kubeconfig)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Path]:
    """The local platform's Prometheus (no operator or Alertmanager answers on the ports it is given)."""
    root = tmp_path / "prometheus"
    pid, _ = monitoring.start_prometheus(root, tmp_path, free_port(), free_port(), tmp_path / "targets.json")
    try:
        yield root
    finally:
        terminate(pid)


def loaded_groups(root: Path) -> set[str]:
    address = monitoring.address_file(root).read_text()
    groups = httpx.get(f"http://{address}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return {g["name"] for g in groups}


def apply_rule(api: client.ApiClient, namespace: str, name: str, expr: str) -> dict[str, Any]:
    group = {"name": f"{namespace}.{name}", "rules": [{"alert": "Example", "expr": expr}]}
    return kube.apply(api, rules.prometheus_rule(name, namespace, [group], {}))


def warnings(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e.message for e in items if e.involved_object.name == name and e.reason == "InvalidRule"]


def test_rules_are_loaded_refused_with_promtools_words_and_unloaded_with_their_objects(
    api: client.ApiClient, namespace: str, prometheus: Path
) -> None:
    sync = RuleSync(monitoring.cluster_rules(prometheus), monitoring.address_file(prometheus))
    shipped = loaded_groups(prometheus)
    assert "kubeforge.drift" in shipped, "the shipped rules load beside the objects'"
    with prometheus_rules_kind(api):
        apply_rule(api, namespace, "good", "up == 0")
        sync.sync(api, {namespace})
        assert loaded_groups(prometheus) == shipped | {f"{namespace}.good"}

        # A rule Prometheus cannot parse stays out, the others stay loaded, and its object says why.
        apply_rule(api, namespace, "broken", "sum(up")
        sync.sync(api, {namespace})
        sync.sync(api, {namespace})  # looked at again: the same text is not checked, nor reported, twice
        assert loaded_groups(prometheus) == shipped | {f"{namespace}.good"}
        messages = wait_for(lambda: warnings(api, namespace, "broken"), what="the InvalidRule event")
        assert len(messages) == 1 and messages[0].startswith("not loaded into Prometheus: spec.groups")
        assert '"Example": could not parse expression' in messages[0] and "unclosed left parenthesis" in messages[0]

        # Fixed, it loads; deleted, it goes.
        apply_rule(api, namespace, "broken", "sum(up) == 0")
        sync.sync(api, {namespace})
        assert loaded_groups(prometheus) == shipped | {f"{namespace}.good", f"{namespace}.broken"}
        custom = client.CustomObjectsApi(api)
        custom.delete_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "prometheusrules", "good")
        sync.sync(api, {namespace})
        assert loaded_groups(prometheus) == shipped | {f"{namespace}.broken"}
    # The kind no longer served (the CRD and its objects removed): no rules of objects, and no error.
    sync.sync(api, {namespace})
    assert loaded_groups(prometheus) == shipped

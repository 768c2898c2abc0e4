"""The ModelDeployment operator as a real process, with a real data plane.

The local workload runner plays the kubelet: the Triton and gateway Deployments the
operator creates run as real processes (Triton exports each version from a real MLflow
in its init container), and live traffic goes through the real gateway with tritonclient.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc
from kubernetes import client
from kubernetes.client.rest import ApiException
from mlflow import MlflowClient

from kubeforge.core import modelcontract as mc
from kubeforge.local.demo import Traffic
from kubeforge.local.processes import alive
from kubeforge.local.runner.state import RunnerState
from kubeforge.operators.deployment.children import ROUTES_FILE, routes_name
from kubeforge.serving.routes import RouteTable
from tests.conftest import RunnerProcess
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.serving.conftest import N_FEATURES, Threshold, answered, register, signature

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "modeldeployments"
MD_LABEL = "kubeforge.dev/modeldeployment"
ROWS = [[random.Random(i).uniform(-1, 1) for _ in range(N_FEATURES)] for i in range(200)]


@pytest.fixture(scope="module")
def registry(mlflow) -> Iterator[MlflowClient]:
    yield MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)


def model(mlflow, registry: MlflowClient, name: str, thresholds: list[float], aliases: dict[str, int]) -> None:
    """Registered versions of a two-class model; versions with different thresholds disagree on some inputs."""
    for t in thresholds:
        register(mlflow.url, name, Threshold(t, 1.0), signature())
    for alias, version in aliases.items():
        registry.set_registered_model_alias(name, alias, str(version))


def create_md(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def cond(api: client.ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(api, namespace, name).get("conditions", []) if c["type"] == type_), {})


def ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    wait_for(lambda: cond(api, namespace, name, "Ready").get("status") == "True", timeout, f"{name} Ready")
    return status(api, namespace, name)


def deployments(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items)


def traffic(api: client.ApiClient, namespace: str, name: str) -> Traffic:
    url = status(api, namespace, name)["url"].split("/v2/")[0]
    caller = Traffic(url, name, ROWS, rate=50)
    caller.start()
    return caller


CANARY_ANALYSIS = {"interval": "2s", "failureLimit": 2, "minRequests": 5, "comparePercent": 100}


def test_serves_the_aliased_version_through_the_gateway(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "serve-me", [0.0, 0.0], {"champion": 2})
    create_md(api, ns, "serve-me", model={"name": "serve-me", "alias": "champion"})
    st = ready(api, ns, "serve-me")
    assert st["stableVersion"] == "2"
    assert st["traffic"] == [{"version": "2", "role": "stable", "percent": 100}]
    assert deployments(api, ns) == ["serve-me-gateway", "serve-me-v2"]
    caller = traffic(api, ns, "serve-me")
    time.sleep(2)
    caller.stop()
    assert caller.samples and all(s.ok and s.version == "2" for s in caller.samples)
    # The same deployment over gRPC, at the address its status gives, with Triton's own client.
    grpc = tritonclient.grpc.InferenceServerClient(st["grpcUrl"])
    inp = tritonclient.grpc.InferInput(mc.INPUT_NAME, [2, N_FEATURES], "FP32")
    inp.set_data_from_numpy(np.array(ROWS[:2], dtype=np.float32))
    answer = grpc.infer("serve-me", [inp])
    assert answer.get_response().model_version == "2" and answer.as_numpy(mc.OUTPUT_NAME).shape[0] == 2


def test_a_healthy_canary_walks_its_steps_and_is_promoted(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "good", [0.0, 0.0], {"champion": 1})
    canary = {
        "model": {"name": "good", "alias": "candidate"},
        "steps": [{"weight": 30, "pause": "3s"}, {"weight": 70, "pause": "3s"}],
        "scaleDownDelay": "2s",
        "analysis": {
            **CANARY_ANALYSIS,
            "metrics": [{"name": "error-rate", "max": 0.01}, {"name": "agreement", "min": 0.95}],
        },
    }
    create_md(api, ns, "good", model={"name": "good", "alias": "champion"}, canary=canary)
    ready(api, ns, "good")
    caller = traffic(api, ns, "good")
    try:
        registry.set_registered_model_alias("good", "candidate", "2")
        seen_weights = set()

        def promoted() -> bool:
            st = status(api, ns, "good")
            seen_weights.add(st.get("canaryWeight"))
            return st.get("stableVersion") == "2"

        wait_for(promoted, 180, "promotion of version 2")
    finally:
        caller.stop()
    assert {30, 70} <= seen_weights, seen_weights
    assert cond(api, ns, "good", "Promoted")["status"] == "True"
    assert not [s for s in caller.samples if not s.ok], "no request may fail during a rollout"
    assert {s.version for s in caller.samples} == {"1", "2"}
    wait_for(lambda: deployments(api, ns) == ["good-gateway", "good-v2"], 60, "old stable scaled away")


def test_a_disagreeing_canary_is_rolled_back_naming_the_metric_and_no_request_fails(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    # Version 2 answers class 1 only above 0.5: it disagrees with version 1 on a quarter of the inputs.
    model(mlflow, registry, "bad", [0.0, 0.5], {"champion": 1})
    canary = {
        "model": {"name": "bad", "alias": "candidate"},
        "steps": [{"weight": 50, "pause": "30s"}, {"weight": 100}],
        "analysis": {**CANARY_ANALYSIS, "metrics": [{"name": "agreement", "min": 0.95}]},
    }
    create_md(api, ns, "bad", model={"name": "bad", "alias": "champion"}, canary=canary)
    ready(api, ns, "bad")
    caller = traffic(api, ns, "bad")
    try:
        registry.set_registered_model_alias("bad", "candidate", "2")
        wait_for(lambda: status(api, ns, "bad").get("canaryWeight") == 50, 120, "canary taking traffic")
        started = time.monotonic()
        wait_for(lambda: status(api, ns, "bad").get("rolledBackVersion") == "2", 60, "rollback")
        rolled_back_after = time.monotonic() - started
    finally:
        caller.stop()
    message = cond(api, ns, "bad", "RolledBack")["message"]
    # The message names the metric, the value measured (about 0.75, give or take sampling) and the bound.
    measured = float(re.search(r"agreement = ([0-9.]+), wanted >= 0\.95", message).group(1))
    assert 0.4 < measured < 0.95, message
    # Two failed checks at a 2 s interval (the first look only takes a baseline), with room for a busy
    # machine: far sooner than the 30 s step pause after which a passing canary would advance.
    assert rolled_back_after < 15, rolled_back_after
    assert status(api, ns, "bad")["traffic"] == [{"version": "1", "role": "stable", "percent": 100}]
    assert not [s for s in caller.samples if not s.ok], "no request may fail while rolling back"
    core = client.CoreV1Api(api)
    rolled_back = lambda: any(  # noqa: E731 - the Event is posted after the status write
        e.reason == "RolledBack" and e.involved_object.name == "bad" for e in core.list_namespaced_event(ns).items
    )
    wait_for(rolled_back, 30, "event RolledBack")


def test_an_operator_restart_resumes_at_the_same_step(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "resume", [0.0, 0.0], {"champion": 1, "candidate": 2})
    canary = {
        "model": {"name": "resume", "alias": "candidate"},
        "steps": [{"weight": 30, "pause": "1h"}, {"weight": 100}],
    }
    create_md(api, ns, "resume", model={"name": "resume", "alias": "champion"}, canary=canary)
    settled = [{"version": "1", "role": "stable", "percent": 70}, {"version": "2", "role": "canary", "percent": 30}]
    wait_for(lambda: status(api, ns, "resume").get("traffic") == settled, 120, "step 1 at 30%")
    before = status(api, ns, "resume")
    names = deployments(api, ns)
    operator.stop()
    operator.start()
    time.sleep(4)  # the new operator has listed everything and its timers have ticked
    after = status(api, ns, "resume")
    for key in ("canaryVersion", "canaryWeight", "currentStep", "stepStarted", "traffic"):
        assert after[key] == before[key], key
    assert deployments(api, ns) == names == ["resume-gateway", "resume-v1", "resume-v2"]


def test_a_moving_alias_starts_a_rollout_and_a_missing_one_degrades(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "follow", [0.0, 0.0], {"prod": 1})
    create_md(api, ns, "follow", model={"name": "follow", "alias": "prod"}, followAlias=True)
    ready(api, ns, "follow")
    registry.set_registered_model_alias("follow", "prod", "2")
    wait_for(lambda: status(api, ns, "follow").get("canaryVersion") == "2", 60, "rollout of version 2")
    assert cond(api, ns, "follow", "Progressing")["status"] == "True"
    registry.delete_registered_model_alias("follow", "prod")
    wait_for(lambda: cond(api, ns, "follow", "Degraded").get("status") == "True", 60, "Degraded")
    degraded = cond(api, ns, "follow", "Degraded")
    assert "alias 'prod'" in degraded["message"] and "does not exist" in degraded["message"]
    assert cond(api, ns, "follow", "Ready")["status"] == "True", "the stable version keeps serving"
    assert status(api, ns, "follow")["stableVersion"] == "1"


def test_invalid_specs_are_refused_naming_the_field(operator: Operator, api: client.ApiClient, namespace: str) -> None:
    create_md(
        api,
        namespace,
        "bad-steps",
        model={"name": "nothing", "version": 1},
        canary={"model": {"name": "nothing", "version": 2}, "steps": [{"weight": 60}, {"weight": 40}]},
    )
    wait_for(lambda: cond(api, namespace, "bad-steps", "Ready").get("reason") == "InvalidSpec", what="InvalidSpec")
    assert "spec.canary" in cond(api, namespace, "bad-steps", "Ready")["message"]
    assert deployments(api, namespace) == []


def test_serving_pods_ask_for_the_cpu_and_memory_the_spec_names(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow, registry
) -> None:
    """Triton's and the gateway's containers request CPU (which autoscaling's utilisation is measured against; an
    HPA on pods without a CPU request never scales) and request and limit memory, as the spec says or by default;
    a quantity that is not one is refused by the API server, naming the field."""
    model(mlflow, registry, "sized", [0.0], {"champion": 1})
    create_md(
        api,
        namespace,
        "sized",
        model={"name": "sized", "alias": "champion"},
        runtime={"cpu": "2", "memory": "3Gi"},
        gateway={"cpu": "500m", "memory": "768Mi"},
        autoscaling={"minReplicas": 1, "maxReplicas": 3},
    )
    create_md(api, namespace, "plain", model={"name": "sized", "alias": "champion"})
    want = ["plain-gateway", "plain-v1", "sized-gateway", "sized-v1"]
    wait_for(lambda: deployments(api, namespace) == want, what="children")
    apps = client.AppsV1Api(api)

    def resources(deployment: str) -> list[tuple[dict[str, str], dict[str, str]]]:
        pod = apps.read_namespaced_deployment(deployment, namespace).spec.template.spec
        containers = [*(pod.init_containers or []), *pod.containers]
        return [(c.resources.requests, c.resources.limits) for c in containers]

    triton = ({"cpu": "2", "memory": "3Gi"}, {"memory": "3Gi"})
    assert resources("sized-v1") == [triton, triton], "the exporting init container asks for what Triton does"
    assert resources("sized-gateway") == [({"cpu": "500m", "memory": "768Mi"}, {"memory": "768Mi"})]
    assert resources("plain-v1")[1] == ({"cpu": "1", "memory": "2Gi"}, {"memory": "2Gi"})
    assert resources("plain-gateway") == [({"cpu": "1", "memory": "1Gi"}, {"memory": "1Gi"})]
    hpa = client.AutoscalingV1Api(api).read_namespaced_horizontal_pod_autoscaler("sized-v1", namespace).spec
    assert (hpa.scale_target_ref.name, hpa.min_replicas, hpa.max_replicas) == ("sized-v1", 1, 3)

    with pytest.raises(ApiException) as refused:
        create_md(api, namespace, "greedy", model={"name": "sized", "version": 1}, gateway={"cpu": "a lot"})
    assert refused.value.status == 422 and "spec.gateway.cpu" in refused.value.body
    with pytest.raises(ApiException) as refused:
        create_md(api, namespace, "no-gateway", model={"name": "sized", "version": 1}, gateway={"replicas": 0})
    assert refused.value.status == 422 and "spec.gateway.replicas" in refused.value.body


def test_an_autoscaled_triton_keeps_the_autoscalers_replicas_when_its_spec_changes(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow, registry
) -> None:
    """minReplicas sets a version's replicas until the autoscaler scales it; from then on the replicas are the
    autoscaler's, and a change that rolls the Triton Deployment (a new runtime, a new minReplicas) leaves them as
    they are, instead of dropping a scaled-up deployment back to its minimum under load. Without autoscaling the
    spec's replicas apply again."""
    model(mlflow, registry, "busy", [0.0], {"champion": 1})
    create_md(api, namespace, "busy", model={"name": "busy", "alias": "champion"}, autoscaling={"maxReplicas": 5})
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def triton() -> tuple[int, str]:
        spec = apps.read_namespaced_deployment("busy-v1", namespace).spec
        return spec.replicas, spec.template.spec.containers[0].resources.requests["cpu"]

    def change(spec: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "busy", {"spec": spec})

    wait_for(lambda: "busy-v1" in deployments(api, namespace), what="Triton's Deployment")
    assert triton() == (1, "1")
    change({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}})
    wait_for(lambda: triton() == (2, "1"), what="minReplicas, the autoscaler not having scaled yet")
    # Scaled up as the autoscaler does: through the scale subresource, by its own field manager.
    scale = {"spec": {"replicas": 4}}
    apps.patch_namespaced_deployment_scale("busy-v1", namespace, scale, field_manager="kube-controller-manager")
    # The operator learns the replicas from its watch; a spec change it handled before that would go by what it knew.
    seen = f"{namespace}/busy: Deployment busy-v1 changed by someone else"
    wait_for(lambda: seen in operator.log_text(), what="the operator seeing the scale")
    change({"runtime": {"cpu": "2"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 5}})
    wait_for(lambda: triton()[1] == "2", what="the new runtime")
    time.sleep(1)  # the pass that follows the Deployment's own event
    assert triton() == (4, "2"), "the autoscaler's replicas kept"
    hpa = client.AutoscalingV1Api(api).read_namespaced_horizontal_pod_autoscaler("busy-v1", namespace).spec
    assert (hpa.min_replicas, hpa.max_replicas) == (3, 5)
    change({"autoscaling": None, "replicas": 1})
    wait_for(lambda: triton() == (1, "2"), what="the spec's replicas once autoscaling is off")


def test_deleting_removes_everything_it_created_and_leaves_mlflow(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "doomed", [0.0], {"champion": 1})
    create_md(api, ns, "doomed", model={"name": "doomed", "alias": "champion"})
    ready(api, ns, "doomed")
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "doomed")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    selector = f"{MD_LABEL}=doomed"
    wait_for(
        lambda: (
            not apps.list_namespaced_deployment(ns, label_selector=selector).items
            and not core.list_namespaced_service(ns, label_selector=selector).items
            and not core.list_namespaced_config_map(ns, label_selector=selector).items
        ),
        what="children removed",
    )
    assert registry.get_model_version_by_alias("doomed", "champion").version == "1", "MLflow untouched"


def test_children_of_a_deployment_deleted_while_no_operator_ran_are_removed_after_it_starts(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow, registry
) -> None:
    model(mlflow, registry, "orphaned", [0.0], {"champion": 1})
    create_md(api, namespace, "orphaned", model={"name": "orphaned", "alias": "champion"})
    wait_for(lambda: deployments(api, namespace) == ["orphaned-gateway", "orphaned-v1"], what="children")
    operator.stop()
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orphaned")
        # No finalizer holds it: it is gone at once, and nothing but the operator removes its children here.
        wait_for(
            lambda: (
                not client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                    "items"
                ]
            )
        )
        assert deployments(api, namespace) == ["orphaned-gateway", "orphaned-v1"]
    finally:
        operator.start()
    core, selector = client.CoreV1Api(api), f"{MD_LABEL}=orphaned"
    wait_for(
        lambda: (
            not deployments(api, namespace)
            and not core.list_namespaced_service(namespace, label_selector=selector).items
            and not core.list_namespaced_config_map(namespace, label_selector=selector).items
        ),
        40,
        "children removed by the restarted operator",
    )


def test_a_runner_killed_mid_rollout_is_restarted_and_the_rollout_finishes_without_duplicates(
    operator: Operator, api: client.ApiClient, runner_namespace: str, runner: RunnerProcess, mlflow, registry
) -> None:
    ns = runner_namespace
    model(mlflow, registry, "survive", [0.0, 0.0], {"champion": 1})
    canary = {
        "model": {"name": "survive", "alias": "candidate"},
        "steps": [{"weight": 50, "pause": "4s"}, {"weight": 100, "pause": "2s"}],
        "scaleDownDelay": "1s",
        "analysis": {**CANARY_ANALYSIS, "metrics": [{"name": "error-rate", "max": 0.01}]},
    }
    create_md(api, ns, "survive", model={"name": "survive", "alias": "champion"}, canary=canary)
    ready(api, ns, "survive")
    caller = traffic(api, ns, "survive")
    try:
        registry.set_registered_model_alias("survive", "candidate", "2")
        wait_for(lambda: status(api, ns, "survive").get("canaryWeight") == 50, 120, "canary at 50%")
        before = pods(runner, ns)
        runner.stop()
        runner.start()
        wait_for(lambda: status(api, ns, "survive").get("stableVersion") == "2", 120, "promotion after restart")
    finally:
        caller.stop()
    assert not [s for s in caller.samples if not s.ok]
    # The restarted runner adopted the processes it found: the same pids, one pod per Deployment.
    after = pods(runner, ns)
    for owner in ("survive-gateway", "survive-v2"):
        assert after[owner] == before[owner], owner


def pods(runner: RunnerProcess, namespace: str) -> dict[str, list[int]]:
    """Deployment name -> pids of its running local pod processes, from the runner's own state."""
    state = RunnerState.load(runner.data_dir / "runner")
    out: dict[str, list[int]] = {}
    for pod in state.pods.values():
        if pod.namespace == namespace:
            owner = pod.name.rsplit("-", 2)[0]
            out.setdefault(owner, []).extend(c.pid for c in pod.containers if c.pid and alive(c.pid))
    return out


def route_versions(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """The versions of the route table the operator wrote for the gateway."""
    cm = client.CoreV1Api(api).read_namespaced_config_map(routes_name(name), namespace)
    return RouteTable.parse(cm.data[ROUTES_FILE]).model_dump(by_alias=True)["models"][name]["versions"]


def test_every_triton_replica_answers_and_one_killed_fails_no_request(
    operator: Operator, api: client.ApiClient, runner_namespace: str, runner: RunnerProcess, mlflow, registry
) -> None:
    """Two Triton replicas of a version both take requests: where no Service balances over them (the local
    runtime addresses pods) the route table names each and the gateway goes round-robin. kill -9 of one mid-traffic
    fails no request (the gateway tries the other), and the restarted replica takes requests again."""
    ns = runner_namespace
    model(mlflow, registry, "spread", [0.0], {"champion": 1})
    create_md(api, ns, "spread", model={"name": "spread", "alias": "champion"}, replicas=2)
    ready(api, ns, "spread")

    def replicas() -> list[str]:
        (stable,) = route_versions(api, ns, "spread")
        return stable.get("endpoints") or [stable["url"]]

    wait_for(lambda: len(replicas()) == 2, 120, "both replicas in the route table")
    model_name = route_versions(api, ns, "spread")[0]["tritonModel"]
    first = replicas()
    before = {url: answered(url, model_name) for url in first}
    caller = traffic(api, ns, "spread")
    try:
        time.sleep(2)
        assert all(answered(url, model_name) > before[url] for url in first), "each replica answered"
        port = int(first[0].rsplit(":", 1)[1])
        victim = serving_at(runner, port)
        os.kill(victim, signal.SIGKILL)  # the first replica's Triton
        time.sleep(3)

        def back() -> bool:
            with contextlib.suppress(StopIteration, OSError, httpx.HTTPError):
                return (
                    serving_at(runner, port) != victim and len(replicas()) == 2 and answered(first[0], model_name) >= 0
                )
            return False

        wait_for(back, 120, "the killed replica restarted and in the route table again")
        again = replicas()
        counts = {url: answered(url, model_name) for url in again}
        time.sleep(2)
    finally:
        caller.stop()
    assert caller.samples and not [s for s in caller.samples if not s.ok], "no request failed"
    assert all(answered(url, model_name) > counts[url] for url in again), "both replicas answer again"


def serving_at(runner: RunnerProcess, port: int) -> int:
    """The pid of the running local container whose pod has port as a local port, from the runner's own state."""
    state = RunnerState.load(runner.data_dir / "runner")
    pod = next(p for p in state.pods.values() if any(d.get("local") == port for d in p.ports))
    return next(c.pid for c in pod.containers if not c.init and c.pid and alive(c.pid))

"""The demo's story end to end, in a temporary data dir: what `make demo` shows a newcomer.

Real everything: API server, operators, the local runner playing kubelet, MLflow, the
trainer, Triton per version and the gateway, Prometheus and Alertmanager; traffic through
tritonclient. Every dashboard query and alert expression is evaluated against the
platform's Prometheus at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner
from kubernetes import client

from kubeforge import cli
from kubeforge.core import kube
from kubeforge.local import runtime
from kubeforge.local.controlplane import read_state
from kubeforge.local.demo import SHIFTED, Demo, Traffic
from kubeforge.local.processes import alive
from kubeforge.local.runner.state import RunnerState
from kubeforge.monitoring import dashboards, rules
from tests.conftest import REPO
from tests.e2e.test_up_down import _sessions, all_listening_ports, listening_sockets, recorded_pids
from tests.integration.operators.conftest import wait_for
from tests.promql import still_unfed

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1500)
def test_train_serve_promote_and_roll_back_with_no_failed_request(tmp_path: Path) -> None:
    data, out = tmp_path / "kubeforge", tmp_path / "out"
    try:
        result = Demo(data, REPO / "docs" / "examples", out).run()
        api = kube.api_client(runtime.Layout(data).kubeconfig)
        custom = client.CustomObjectsApi(api)
        jobs = {
            name: custom.get_namespaced_custom_object("kubeforge.dev", "v1alpha1", "default", "trainingjobs", name)
            for name in ("cancer-v1", "cancer-v2", "cancer-v3")
        }
        assert {n: j["status"]["phase"] for n, j in jobs.items()} == dict.fromkeys(jobs, "Succeeded")
        assert [j["status"]["mlflow"]["modelVersion"] for j in jobs.values()] == ["1", "2", "3"]
        assert jobs["cancer-v2"]["status"]["metrics"]["accuracy"] > 0.9

        md = custom.get_namespaced_custom_object("kubeforge.dev", "v1alpha1", "default", "modeldeployments", "cancer")
        st = md["status"]
        assert st["stableVersion"] == "4" and st["rolledBackVersion"] == "3"
        conditions = {c["type"]: c for c in st["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        events = client.CoreV1Api(api).list_namespaced_event("default").items
        reasons = {e.reason for e in events if e.involved_object.name == "cancer"}
        assert {"CanaryStarted", "StepAdvanced", "CanaryPromoted", "RolledBack", "RetrainStarted"} <= reasons

        # The retrain: live accuracy of version 2 on the shifted traffic fell under 0.9, one TrainingJob copied
        # cancer-v2's spec to learn from the recent labelled requests, and its version 4 passed the canary.
        retrain = st["lastRetrain"]
        assert retrain["trigger"] == "accuracy" and retrain["value"] < 0.9 and retrain["modelVersion"] == "4"
        retrains = custom.list_namespaced_custom_object(
            "kubeforge.dev", "v1alpha1", "default", "trainingjobs", label_selector="kubeforge.dev/retrain-of=cancer"
        )["items"]
        assert [r["metadata"]["name"] for r in retrains] == [retrain["trainingJob"]]
        assert "/v2/models/cancer/feedback/dataset?since=30s" in retrains[0]["spec"]["dataset"]["uri"]
        assert result["retrain"]["status"]["metrics"]["accuracy"] > 0.9
        # In one attempt: its data set names every column alike, also those of rows a rolled-back version answered.
        assert result["retrain"]["status"]["attempts"] == 1

        # Lineage: what serves, from which TrainingJob, on which bytes, because of which trigger.
        state = runtime.LocalState.read(data)
        where = ["--kubeconfig", str(runtime.Layout(data).kubeconfig), "--tracking-uri", state.mlflow_url]
        walked = CliRunner().invoke(cli.main, ["lineage", "md/cancer", "--json", *where])
        assert walked.exit_code == 0, walked.output
        (stable,) = json.loads(walked.output)["versions"]
        assert (stable["role"], stable["version"]) == ("stable", "4")
        assert stable["trainingJob"] == {"namespace": "default", "name": retrain["trainingJob"], "state": "Succeeded"}
        assert stable["retrain"] == {"of": "cancer", "trigger": "accuracy"}
        assert "/feedback/dataset" in stable["data"]["uri"] and len(stable["data"]["sha256"]) == 64
        table = CliRunner().invoke(cli.main, ["lineage", "md/cancer", *where]).output
        assert "md/cancer on accuracy" in table and stable["data"]["sha256"][:12] in table
        # The card of the version the retrain registered: its data's hash and its run's metrics.
        card = CliRunner().invoke(cli.main, ["model", "card", "breast-cancer", "4", "--tracking-uri", state.mlflow_url])
        assert card.exit_code == 0, card.output
        assert stable["data"]["sha256"] in card.output
        assert f"| accuracy | {result['retrain']['status']['metrics']['accuracy']:.4f} |" in card.output

        samples = result["samples"]
        assert len(samples) > 200
        assert [s for s in samples if not s.ok] == [], "no request fails during rollouts, rollback and retrain"
        assert {s.version for s in samples} == {"1", "2", "3", "4"}
        assert (out / "rollout.png").stat().st_size > 10_000
        summary = (out / "summary.md").read_text()
        assert "| 3 | cancer-v3 |" in summary and f"| 4 | {retrain['trainingJob']} |" in summary
        assert "rollbacks: 1 (version 3 rolled back" in summary

        # Drift: the shifted features, and only those, reached Alertmanager, from the deployment's own rule.
        drift = result["drift"]
        alerted = {a["labels"]["feature"] for a in drift.alerts if a["labels"]["alertname"] == "ModelFeatureDrift"}
        assert alerted == set(SHIFTED)
        assert {a["labels"]["version"] for a in drift.alerts} == {"2"}
        assert all(a["annotations"]["runbook_url"].endswith(".md") for a in drift.alerts)
        assert all(max(v for _, v in drift.psi[f]) > drift.threshold for f in SHIFTED)
        assert drift.shifted_at < drift.alerted_at
        assert all(f"| {feature} |" in summary for feature in SHIFTED)
        rule = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", "default", "prometheusrules", "cancer-slo"
        )
        holds = {r["alert"]: r.get("for") for g in rule["spec"]["groups"] for r in g["rules"]}
        assert holds["ModelFeatureDrift"] == "10s", "spec.monitoring.drift.alertAfter of the example"

        # Every dashboard query and alert expression, against the platform's Prometheus while traffic flows.
        again = Traffic(st["url"].split("/v2/")[0], "cancer", result["rows"])
        again.start()
        try:
            wait_for(lambda: prometheus_has(state.prometheus_url, "kubeforge_drift_psi"), 90, "drift gauges")
            queries = [
                (where, q)
                for where, q in monitored_queries(rule)
                if not is_about_features(where) and not is_about_regression(where)
            ]
            problems = still_unfed(state.prometheus_url, queries)
        finally:
            again.stop()
        assert problems == []

        # A prediction through the gateway with the standard client, answered by the stable version.
        gateway = httpclient.InferenceServerClient(st["url"].split("/v2/")[0].removeprefix("http://"))
        row = np.zeros((1, 30), dtype=np.float32)
        inp = httpclient.InferInput("features", list(row.shape), "FP32")
        inp.set_data_from_numpy(row)
        answer = gateway.infer("cancer", [inp])
        probabilities = answer.as_numpy("outputs")
        assert probabilities.shape == (1, 2) and abs(float(probabilities.sum()) - 1) < 1e-4
        assert answer.get_response()["model_version"] == "4"

        pids = recorded_pids(data)
        workload_pids = [c.pid for p in RunnerState.load(data / "runner").pods.values() for c in p.containers if c.pid]
        sockets = listening_sockets(set(pids + workload_pids))
        ours = {port for _, port in sockets}
        assert len(ours) >= 6  # API server, etcd, MLflow, operator health, gateway, Triton
        assert {address for address, _ in sockets} == {"127.0.0.1"}, "nothing is reachable from the network"

        # `down` then `up`: what served before serves again, at the same address, within a minute.
        runtime.down(data)
        assert not [pid for pid in pids + workload_pids if alive(pid)]
        assert not _sessions(set(pids + workload_pids))
        runtime.up(data)
        wait_for(lambda: predict(gateway) == "4", 60, "version 4 served again after down and up")
        api = kube.api_client(runtime.Layout(data).kubeconfig)
        md = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "kubeforge.dev", "v1alpha1", "default", "modeldeployments", "cancer"
        )
        wait_for(lambda: _ready(api), 30, "Ready=True after down and up")
        assert md["status"]["url"] == st["url"]

        # `make demo` again over the same data starts over and tells the same story from version 1, instead of
        # finding its TrainingJobs done and its deployment past the canary it waits for.
        second = Demo(data, REPO / "docs" / "examples", tmp_path / "second").run()
        assert [s for s in second["samples"] if not s.ok] == []
        assert {s.version for s in second["samples"]} == {"1", "2", "3", "4"}
        st = second["final"]["status"]
        assert (st["stableVersion"], st["rolledBackVersion"], st["lastRetrain"]["modelVersion"]) == ("4", "3", "4")
        assert {a["labels"]["version"] for a in second["drift"].alerts} == {"2"}
        assert second["drift"].shifted_at < second["drift"].alerted_at
        pids = recorded_pids(data)
    finally:
        runtime.down(data)
    assert not [pid for pid in pids if alive(pid)]
    assert not runtime.leftovers(data)
    assert not ours & all_listening_ports()
    assert json.loads((data / "local.json").read_text())  # state kept for the next `up`


@contextlib.contextmanager
def _demo_training(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """`kubeforge demo` in a process of its own, once it has applied its first TrainingJob: (the process, its stderr's
    file, the data directory). The demo and the platform are stopped after, and nothing of either is left."""
    data, log = tmp_path / "kubeforge", tmp_path / "demo.err"
    argv = [sys.executable, "-m", "kubeforge.cli", "demo", "--data-dir", str(data), "--examples", "docs/examples"]
    with log.open("w") as stderr:
        demo = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        _lines_until(demo, "TrainingJob cancer-v1 applied", log)
        yield demo, log, data
    finally:
        demo.kill()
        runtime.down(data)
    assert not runtime.leftovers(data)


def _lines_until(demo: subprocess.Popen[str], text: str, log: Path) -> list[str]:
    """What the demo says until text, that line included."""
    assert demo.stdout is not None
    said = []
    for line in demo.stdout:
        said.append(line)
        if text in line:
            return said
    raise AssertionError(f"the story ended before {text!r}: {said} {log.read_text()}")


@pytest.mark.timeout(600)
def test_the_demo_goes_on_when_the_api_server_is_killed(tmp_path: Path) -> None:
    """The supervisor starts the control plane again at the address it had, and the story's wait goes on."""
    with _demo_training(tmp_path) as (demo, log, data):
        before = read_state(data / "controlplane")
        assert before is not None
        os.kill(before.apiserver_pid, signal.SIGKILL)
        said = _lines_until(demo, "cancer-v1 registered as version 1", log)
        assert any("the API server does not answer" in line for line in said), said
        assert any("the API server answers again" in line for line in said), said
        after = read_state(data / "controlplane")
        assert after is not None and after.apiserver_pid != before.apiserver_pid and after.server == before.server


@pytest.mark.timeout(600)
def test_the_demo_stops_with_what_is_down_when_the_api_server_is_killed_with_no_supervisor(tmp_path: Path) -> None:
    with _demo_training(tmp_path) as (demo, log, data):
        apiserver = read_state(data / "controlplane")
        assert apiserver is not None
        os.kill(json.loads((data / "local.json").read_text())["supervisor_pid"], signal.SIGKILL)
        os.kill(apiserver.apiserver_pid, signal.SIGKILL)
        demo.communicate(timeout=120)
        err = log.read_text()
        assert demo.returncode == 1
        assert "Traceback" not in err, err
        assert "Error: the demo stopped: " in err and "not running now: control plane, supervisor" in err, err
        assert f"logs under {data / 'logs'}" in err


def prometheus_has(url: str, promql: str) -> bool:
    return bool(httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"])


def monitored_queries(rule: dict | None = None) -> list[tuple[str, str]]:
    """The shared rules, a deployment's own rule as the operator wrote it, and the dashboards."""
    queries = [(f"{g['name']} {r.get('alert') or r['record']}", r["expr"]) for g in rules.groups() for r in g["rules"]]
    own = rule["spec"]["groups"] if rule else []
    queries += [(f"{g['name']} {r['alert']}", r["expr"]) for g in own for r in g["rules"]]
    return queries + dashboards.all_queries()


def is_about_regression(where: str) -> bool:
    """Live MAE and RMSE, which only regression models have: the demo's is a classifier. The series and labels
    the gateway exports for them are checked in tests/unit/serving/test_feedback.py."""
    return "Live MAE and RMSE" in where


def is_about_features(where: str) -> bool:
    """The FeatureView queries, which the features test checks against a platform that has FeatureViews."""
    return where.startswith("kubeforge-features:") or "FeatureViewStale" in where


def predict(gateway: httpclient.InferenceServerClient) -> str | None:
    """The version that answers one prediction, or None while nothing does."""
    row = np.zeros((1, 30), dtype=np.float32)
    inp = httpclient.InferInput("features", list(row.shape), "FP32")
    inp.set_data_from_numpy(row)
    try:
        return gateway.infer("cancer", [inp]).get_response()["model_version"]
    except Exception:  # refused, reset or an error answer: not serving yet
        return None


def _ready(api: client.ApiClient) -> bool:
    md = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kubeforge.dev", "v1alpha1", "default", "modeldeployments", "cancer"
    )
    return any(c["type"] == "Ready" and c["status"] == "True" for c in md["status"]["conditions"])

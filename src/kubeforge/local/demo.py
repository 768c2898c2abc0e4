"""`kubeforge demo`: the whole story on one machine, with live traffic and a picture at the end.

Train and register v1, serve it, send traffic through the gateway with tritonclient,
train v2 and watch the canary walk its steps and get promoted, then train a broken v3
(shuffled labels) and watch the analysis roll it back while no request fails. Then the
traffic drifts away from the training data: the gateway's PSI rises, and the drift alert
fires in Prometheus and reaches Alertmanager. The caller posts the true labels; live
accuracy falls, spec.retrain trains a new version on the recent labelled traffic, and the
canary promotes it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from ..api.trainingjob import RETRAIN_OF_LABEL
from ..core import kube
from . import runtime

T = TypeVar("T")

GROUP, VERSION = "kubeforge.dev", "v1alpha1"
SHIFTED = ("mean_radius", "mean_perimeter", "mean_area", "worst_radius", "worst_perimeter", "worst_area")
"""What a new scanner measures larger than the old one did: the drift the demo shows."""
SCALE = 1.5
DRIFT_ALERT = "ModelFeatureDrift"
DEPLOYMENT = "cancer"
V1, V2, V3 = TRAININGJOBS = ("cancer-v1", "cancer-v2", "cancer-v3")
"""The objects the story applies (from the examples); a run starts by deleting what an earlier one left of them."""
Stopped = (
    TimeoutError,
    RuntimeError,
    OSError,
    httpx.HTTPError,
    urllib3.exceptions.HTTPError,
    ApiException,
    kube.ApiError,
)
"""What ends the story early: a step that does not get there, a TrainingJob that fails, a part of the platform that
stops answering (the command says which parts are down)."""


RECONNECT = 90.0
"""How long the story waits for an API server that stopped answering, while the supervisor runs (it starts the
control plane again in about 10 s)."""


def why(err: BaseException) -> str:
    """What stopped the story, in a line: an unreachable server by its address and the request it refused."""
    if isinstance(err, urllib3.exceptions.MaxRetryError):
        reason = str(err.reason).rsplit(": ", 1)[-1]
        return f"no answer from {err.pool.host}:{err.pool.port} ({reason}) to {err.url}"
    return str(err) or type(err).__name__


@dataclass
class Sample:
    t: float
    version: str | None
    ok: bool
    ms: float


@dataclass
class Traffic:
    """A background caller using tritonclient, as any OIP client would; with labels, it also reports the truth
    about each answered request a second later, as a labelling process would, to the gateway's feedback endpoint."""

    url: str
    model: str
    rows: list[list[float]]
    labels: list[int] | None = None  # the truth of each row
    rate: float = 40.0
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0  # wall clock time of the first request, to line up with Prometheus' timestamps
    labelled: int = 0  # labels the gateway joined
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _pending: list[tuple[float, str, int]] = field(default_factory=list)  # (answered at, request id, label)

    def start(self) -> None:
        loops = [self._run] + ([self._label] if self.labels is not None else [])
        self._threads = [threading.Thread(target=loop, daemon=True) for loop in loops]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        import numpy as np
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url=self.url.removeprefix("http://"), connection_timeout=10)
        t0, self.started = time.monotonic(), time.time()
        while not self._stop.is_set():
            i = random.randrange(len(self.rows))
            row = np.asarray([self.rows[i]], dtype=np.float32)
            inp = httpclient.InferInput("features", list(row.shape), "FP32")
            inp.set_data_from_numpy(row)
            request_id = uuid.uuid4().hex
            start = time.perf_counter()
            try:
                result = client.infer(self.model, [inp], request_id=request_id)
                version, ok = result.get_response().get("model_version"), True
            except Exception:  # any failure a caller would see counts
                version, ok = None, False
            self.samples.append(Sample(time.monotonic() - t0, version, ok, (time.perf_counter() - start) * 1000))
            if ok and self.labels is not None:
                self._pending.append((time.monotonic(), request_id, self.labels[i]))
            self._stop.wait(1 / self.rate)

    def _label(self) -> None:
        """Post the labels of answers at least a second old, once a second."""
        while not self._stop.wait(1.0):
            due = time.monotonic() - 1.0
            ready = [p for p in list(self._pending) if p[0] <= due]
            if not ready:
                continue
            del self._pending[: len(ready)]
            body = {"labels": [{"id": request_id, "label": label} for _, request_id, label in ready]}
            try:
                answer = httpx.post(f"{self.url}/v2/models/{self.model}/feedback", json=body, timeout=10)
                self.labelled += answer.json().get("joined", 0) if answer.status_code == 200 else 0
            except httpx.HTTPError:
                pass  # labels lost in transit are lost, as with any labelling process


@dataclass
class Drift:
    """The drift phase as it happened: when the traffic shifted, the PSI Prometheus recorded, the alerts; then live
    accuracy per version and when the retrain started."""

    shifted_at: float  # seconds since traffic started
    threshold: float
    psi: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # feature -> (seconds, PSI)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # as Alertmanager lists them
    alerted_at: float = float("nan")  # seconds since traffic started, when Alertmanager had them all
    accuracy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # version -> (seconds, accuracy)
    retrained_at: float = float("nan")  # seconds since traffic started, when the retrain's TrainingJob was created


class Demo:
    def __init__(self, data_dir: Path, examples: Path, out: Path, namespace: str = "default"):
        self.data_dir, self.examples, self.out, self.ns = data_dir, examples, out, namespace
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.events.append((elapsed, text))
        print(f"[{elapsed:6.1f}s] {text}", flush=True)

    # --- cluster helpers ---------------------------------------------------------------
    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self._answered(
            lambda: self._custom().get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        )

    def apply(self, filename: str, **replace: str) -> dict[str, Any]:
        text = (self.examples / filename).read_text()
        for key, value in replace.items():
            text = text.replace(key, value)
        obj = yaml.safe_load(text)
        obj["metadata"]["namespace"] = self.ns
        self._answered(lambda: kube.apply(self.api, obj))
        return obj

    def _answered(self, call: Callable[[], T]) -> T:
        """call(), a request to the API server that is safe to repeat (a get, a server-side apply); while the API
        server does not answer and the supervisor is there to start it again, tries again for up to RECONNECT
        seconds (the story goes on across a restart of the control plane)."""
        try:
            return call()
        except urllib3.exceptions.MaxRetryError as err:
            if not runtime.supervised(self.data_dir):
                raise
            self.say(f"the API server does not answer ({why(err)}); waiting for the supervisor to start it again")
            began, deadline = time.monotonic(), time.monotonic() + RECONNECT
            while runtime.supervised(self.data_dir) and time.monotonic() < deadline:
                time.sleep(1)
                # A starting API server answers before it serves every kind: any refusal until the deadline is its.
                with contextlib.suppress(urllib3.exceptions.MaxRetryError, ApiException, kube.ApiError):
                    self.api = kube.api_client(runtime.Layout(self.data_dir).kubeconfig)
                    answer = call()
                    self.say(f"  the API server answers again, after {time.monotonic() - began:.0f} s")
                    return answer
            raise

    def wait(self, plural: str, name: str, done, progress=None, timeout: float = 600) -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            obj = self.get(plural, name)
            if progress and (line := progress(obj)) and line != last:
                self.say(line)
                last = line
            if done(obj):
                return obj
            time.sleep(0.5)
        raise TimeoutError(f"{plural}/{name} did not get there in {timeout:.0f}s: {obj.get('status')}")

    def train(self, filename: str, name: str, **replace: str) -> dict[str, Any]:
        self.apply(filename, **replace)
        self.say(f"TrainingJob {name} applied; training (logs under {self.data_dir}/runner/pods/{self.ns}/)")
        tj = self.wait(
            "trainingjobs",
            name,
            lambda o: (
                (o.get("status") or {}).get("mlflow", {}).get("modelVersion")
                or (o.get("status") or {}).get("phase") == "Failed"
            ),
            lambda o: f"  {name}: {(o.get('status') or {}).get('phase', 'Pending')}",
        )
        st = tj["status"]
        if st.get("phase") == "Failed":
            raise RuntimeError(f"{name} failed: {st['conditions']}")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(st.get("metrics", {}).items()))
        self.say(f"  {name} registered as version {st['mlflow']['modelVersion']} ({metrics})")
        return tj

    def start_over(self, timeout: float = 120) -> None:
        """Delete what an earlier run left (its ModelDeployment, its TrainingJobs and their retrains, and the
        registered model they trained, so versions count from 1 again), so a second `kubeforge demo` tells the story
        again instead of finding its TrainingJobs done and its deployment past the canary it waits for. Waits until
        their Jobs and Deployments are gone too, so nothing of the earlier run registers or serves during this one;
        the earlier runs themselves stay in MLflow's experiment."""
        model = yaml.safe_load((self.examples / "trainingjob-v1.yaml").read_text())["spec"]["model"]["name"]
        api_version = f"{GROUP}/{VERSION}"
        left = [kube.get(self.api, api_version, "ModelDeployment", DEPLOYMENT, self.ns)]
        left += [kube.get(self.api, api_version, "TrainingJob", name, self.ns) for name in TRAININGJOBS]
        left += kube.list_objects(self.api, api_version, "TrainingJob", self.ns, f"{RETRAIN_OF_LABEL}={DEPLOYMENT}")
        found = [obj for obj in left if obj]
        if found:
            names = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in found)
            self.say(f"starting over: deleting what the last run left ({names}) and registered model {model!r}")
        for obj in found:
            kube.delete(self.api, obj["apiVersion"], obj["kind"], obj["metadata"]["name"], self.ns)
        owners = {obj["metadata"]["uid"] for obj in found}

        def children() -> list[str]:
            kinds = (("batch/v1", "Job"), ("apps/v1", "Deployment"))
            return [
                f"{kind} {child['metadata']['name']}"
                for api_version, kind in kinds
                for child in kube.list_objects(self.api, api_version, kind, self.ns, "")
                if owners & {ref["uid"] for ref in child["metadata"].get("ownerReferences", [])}
            ]

        deadline = time.monotonic() + timeout
        while remaining := children():
            if time.monotonic() > deadline:
                raise TimeoutError(f"what the last run left is still there after {timeout:.0f}s: {remaining}")
            time.sleep(1)
        gone = httpx.request(
            "DELETE",
            f"{self.state.mlflow_url}/api/2.0/mlflow/registered-models/delete",
            json={"name": model},
            timeout=30,
        )
        if gone.status_code >= 400 and "RESOURCE_DOES_NOT_EXIST" not in gone.text:
            raise RuntimeError(f"MLflow did not delete registered model {model!r}: {gone.text[:300]}")

    # --- the story ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import numpy as np
        from sklearn.datasets import load_breast_cancer

        self.say("starting the local platform (control plane, MLflow, operators, runner)")
        _, self.state = runtime.up(self.data_dir)
        self.api = kube.api_client(runtime.Layout(self.data_dir).kubeconfig)
        self.start_over()
        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        datasets = self.data_dir / "datasets"
        datasets.mkdir(parents=True, exist_ok=True)
        clean, shuffled = datasets / "breast_cancer.csv", datasets / "breast_cancer_shuffled.csv"
        frame.to_csv(clean, index=False)
        bad = frame.copy()
        bad["target"] = np.random.default_rng(0).permutation(bad["target"].to_numpy())
        bad.to_csv(shuffled, index=False)
        self.say(f"wrote {len(frame)} rows of scikit-learn's breast cancer data to {datasets}")

        v1 = self.train("trainingjob-v1.yaml", V1, DATASET=str(clean))
        self.apply("modeldeployment.yaml")
        md = self.wait(
            "modeldeployments",
            DEPLOYMENT,
            lambda o: _cond(o, "Ready") == "True",
            _ready_line,
        )
        url = md["status"]["url"].split("/v2/")[0]
        self.say(f"serving at {md['status']['url']}; sending traffic with tritonclient")
        rows = frame.drop(columns="target").to_numpy(dtype=float).tolist()
        traffic = Traffic(url, DEPLOYMENT, rows, frame["target"].astype(int).tolist())
        traffic.start()
        try:
            v2 = self.train("trainingjob-v2.yaml", V2, DATASET=str(clean))
            self.wait(
                "modeldeployments",
                DEPLOYMENT,
                lambda o: (o.get("status") or {}).get("stableVersion") == v2["status"]["mlflow"]["modelVersion"],
                _rollout_line,
            )
            self.say("  canary promoted: version 2 is stable")
            v3 = self.train("trainingjob-v3-bad.yaml", V3, SHUFFLED_DATASET=str(shuffled))
            bad_version = v3["status"]["mlflow"]["modelVersion"]
            final = self.wait(
                "modeldeployments",
                DEPLOYMENT,
                lambda o: (o.get("status") or {}).get("rolledBackVersion") == bad_version,
                _rollout_line,
            )
            rolled_back = _message(final, "RolledBack")
            self.say(f"  rolled back: {rolled_back}")
            drift = self.drift(traffic, list(frame.drop(columns="target").columns), final)
            v4, final = self.retrained(final, traffic, drift)
        finally:
            traffic.stop()
        summary = summarize(traffic.samples, [v1, v2, v3, v4], final, drift, rolled_back)
        self.out.mkdir(parents=True, exist_ok=True)
        plot(traffic.samples, self.out / "rollout.png", drift)
        (self.out / "summary.md").write_text(summary)
        print("\n" + summary)
        print(f"plot: {self.out / 'rollout.png'}")
        return {"samples": traffic.samples, "final": final, "drift": drift, "rows": rows, "retrain": v4}

    def drift(self, traffic: Traffic, columns: list[str], md: dict[str, Any], timeout: float = 180) -> Drift:
        """Shift the traffic, show the stable version's PSI as Prometheus records it, and wait for the drift alert
        of every shifted feature to reach Alertmanager."""
        shifted = [columns.index(c) for c in SHIFTED]
        traffic.rows = [[v * SCALE if i in shifted else v for i, v in enumerate(row)] for row in traffic.rows]
        shifted_at = time.time()
        drift = Drift(shifted_at - traffic.started, md["spec"]["monitoring"]["drift"]["psiThreshold"])
        self.say(f"drift: a new scanner measures cell sizes {SCALE}x larger ({', '.join(SHIFTED)})")
        stable = md["status"]["stableVersion"]
        psi = f'max by (feature) (kubeforge_drift_psi{{model="{DEPLOYMENT}", version="{stable}", role="stable"}})'
        deadline, shown = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            drift.alerts = [
                a
                for a in httpx.get(f"{self.state.alertmanager_url}/api/v2/alerts", timeout=10).json()
                if a["labels"].get("modeldeployment") == DEPLOYMENT
                and a["labels"]["alertname"].startswith("Model")
                and datetime.fromisoformat(a["startsAt"]).timestamp() >= shifted_at  # not one of an earlier run's
            ]
            if {a["labels"].get("feature") for a in drift.alerts} >= set(SHIFTED):
                drift.alerted_at = time.time() - traffic.started
                break
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                now = sorted(((float(r["value"][1]), r["metric"]["feature"]) for r in self._query(psi)), reverse=True)
                top = ", ".join(f"{feature} {value:.2f}" for value, feature in now[:3]) or "window filling"
                firing = sorted({a["labels"]["alertname"] for a in drift.alerts}) or ["none yet"]
                self.say(f"  PSI of version {stable} (threshold {drift.threshold:g}): {top} | alerts: {firing}")
            time.sleep(1)
        else:
            raise TimeoutError(f"{DRIFT_ALERT} did not reach Alertmanager in {timeout:.0f}s: {drift.alerts}")
        names = ", ".join(sorted(f"{a['labels']['alertname']} {a['labels'].get('feature', '')}" for a in drift.alerts))
        self.say(f"  in Alertmanager ({self.state.alertmanager_url}): {names}")
        found = httpx.get(
            f"{self.state.prometheus_url}/api/v1/query_range",
            params={"query": psi, "start": traffic.started, "end": time.time(), "step": "2s"},
            timeout=30,
        ).json()["data"]["result"]
        drift.psi = {r["metric"]["feature"]: [(t - traffic.started, float(v)) for t, v in r["values"]] for r in found}
        return drift

    def retrained(self, md: dict[str, Any], traffic: Traffic, drift: Drift) -> tuple[dict[str, Any], dict[str, Any]]:
        """Follow what spec.retrain does about the drift: live accuracy falls as labels arrive, the trigger creates
        a TrainingJob on the recent labelled traffic, and its version rolls out through the canary."""
        stable = md["status"]["stableVersion"]
        accuracy = f'kubeforge_live_accuracy{{model="{DEPLOYMENT}", version="{stable}"}}'
        self.say(f"labels arrive for the shifted traffic; live accuracy of version {stable} (retrains below 0.9):")

        def started(o: dict[str, Any]) -> bool:
            return bool((o.get("status") or {}).get("lastRetrain"))

        def accuracy_line(o: dict[str, Any]) -> str:
            live = self._query(accuracy)
            shown = f"{float(live[0]['value'][1]):.3f}" if live else "window filling"
            return f"  live accuracy {shown} | {_cond(o, 'Retraining', 'reason')}: {_message(o, 'Retraining')}"

        md = self.wait("modeldeployments", DEPLOYMENT, started, accuracy_line, timeout=180)
        drift.retrained_at = time.time() - traffic.started
        name = md["status"]["lastRetrain"]["trainingJob"]
        self.say(f"  retraining: {_message(md, 'Retraining')}")
        tj = self.wait(
            "trainingjobs",
            name,
            lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            lambda o: f"  {name}: {(o.get('status') or {}).get('phase', 'Pending')}",
        )
        if tj["status"]["phase"] == "Failed":
            raise RuntimeError(f"{name} failed: {tj['status']['conditions']}")
        version = tj["status"]["mlflow"]["modelVersion"]
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(tj["status"].get("metrics", {}).items()))
        self.say(f"  {name} registered as version {version} ({metrics})")
        final = self.wait(
            "modeldeployments",
            DEPLOYMENT,
            lambda o: (o.get("status") or {}).get("stableVersion") == version,
            _rollout_line,
        )
        self.say(f"  canary promoted: version {version}, trained on recent labelled traffic, is stable")
        time.sleep(5)  # a few more scrapes of the new stable version's accuracy, for the plot
        found = httpx.get(
            f"{self.state.prometheus_url}/api/v1/query_range",
            params={
                "query": f'max by (version) (kubeforge_live_accuracy{{model="{DEPLOYMENT}"}})',
                "start": traffic.started,
                "end": time.time(),
                "step": "2s",
            },
            timeout=30,
        ).json()["data"]["result"]
        drift.accuracy = {
            r["metric"]["version"]: [(t - traffic.started, float(v)) for t, v in r["values"]] for r in found
        }
        return tj, final

    def _query(self, promql: str) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.state.prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
        return found.json()["data"]["result"]


def _cond(obj: dict[str, Any], type_: str, key: str = "status") -> str | None:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c.get(key)
    return None


def _ready_line(obj: dict[str, Any]) -> str:
    """Progress of a ModelDeployment on its way to Ready. Until the operator has written a Ready condition
    there is no reason to show, only that the operator has not answered yet."""
    kind_name = f"  ModelDeployment {obj['metadata']['name']}"
    reason = _cond(obj, "Ready", "reason")
    if reason is None:
        return f"{kind_name}: waiting for the operator"
    message = _message(obj, "Ready")
    return f"{kind_name}: {reason}: {message}" if message else f"{kind_name}: {reason}"


def _message(obj: dict[str, Any], type_: str) -> str:
    return _cond(obj, type_, "message") or ""


def _rollout_line(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    traffic = ", ".join(f"v{t['version']} {t['role']} {t['percent']}%" for t in st.get("traffic", []))
    checks = "; ".join(f"{r['name']}={r.get('value', 'n/a')}" for r in (st.get("analysis") or {}).get("results", []))
    return f"  rollout: {traffic} | {_cond(obj, 'Progressing', 'reason')} | analysis: {checks or '-'}"


def _retrain_line(st: dict[str, Any]) -> str:
    last = st.get("lastRetrain")
    if not last:
        return "retrains: none"
    value = f" {last['value']:.3f}" if last.get("value") is not None else ""
    fate = "stable" if last.get("modelVersion") == st.get("stableVersion") else "not promoted"
    return (
        f"retrain: {last['trigger']}{value} -> TrainingJob {last['trainingJob']} on recent labelled traffic -> "
        f"version {last.get('modelVersion', '?')}, {fate}"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(
    samples: list[Sample], jobs: list[dict[str, Any]], final: dict[str, Any], drift: Drift, rolled_back: str
) -> str:
    """A markdown table: each version's accuracy, what it answered, its latency and its fate; then the drift."""
    st = final["status"]
    lines = [
        "## kubeforge demo summary",
        "",
        "| version | trained as | accuracy | requests answered | p50 ms | p99 ms | fate |",
        "|---|---|---|---|---|---|---|",
    ]
    for tj in jobs:
        version = tj["status"]["mlflow"]["modelVersion"]
        ms = [s.ms for s in samples if s.version == version]
        accuracy = tj["status"].get("metrics", {}).get("accuracy", float("nan"))
        if version == st.get("stableVersion"):
            fate = "stable"
        else:
            fate = "rolled back" if version == st.get("rolledBackVersion") else "replaced"
        lines.append(
            f"| {version} | {tj['metadata']['name']} | {accuracy:.3f} | {len(ms)} "
            f"| {_percentile(ms, 0.5):.2f} | {_percentile(ms, 0.99):.2f} | {fate} |"
        )
    every = [s.ms for s in samples]
    failed = sum(1 for s in samples if not s.ok)
    lines += [
        "",
        f"requests: {len(samples)}, failed: {failed}, "
        f"p50 {_percentile(every, 0.5):.2f} ms, p99 {_percentile(every, 0.99):.2f} ms",
        f"rollbacks: {1 if st.get('rolledBackVersion') else 0} ({rolled_back})",
        _retrain_line(st),
        "",
        f"drift: at {drift.shifted_at:.0f} s the traffic's {', '.join(SHIFTED)} grew {SCALE}x; "
        f"the alerts reached Alertmanager {drift.alerted_at - drift.shifted_at:.0f} s later",
        "",
        "| feature | PSI before | PSI at the alert | alert |",
        "|---|---|---|---|",
    ]
    alerted = {a["labels"]["feature"] for a in drift.alerts if a["labels"]["alertname"] == DRIFT_ALERT}
    others = sorted((f for f in drift.psi if f not in SHIFTED), key=lambda f: -drift.psi[f][-1][1])
    for feature in [*(f for f in SHIFTED if f in drift.psi), *others[:3]]:
        points = drift.psi[feature]
        before = [v for t, v in points if t < drift.shifted_at]
        lines.append(
            f"| {feature} | {before[-1] if before else float('nan'):.3f} | {points[-1][1]:.3f} "
            f"| {DRIFT_ALERT if feature in alerted else '-'} |"
        )
    lines.append(f"| ({len(others) - 3} more features, lower) | | | |")
    predictions = sorted({a["labels"]["alertname"] for a in drift.alerts if "feature" not in a["labels"]})
    if predictions:
        lines += ["", f"also in Alertmanager: {', '.join(predictions)} (larger cells shift the predicted classes)"]
    return "\n".join(lines) + "\n"


def plot(samples: list[Sample], path: Path, drift: Drift, bucket: float = 2.0) -> None:
    """Share of answers per version, error rate, and the stable version's PSI per feature over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    end = max(s.t for s in samples)
    edges = [i * bucket for i in range(int(end / bucket) + 2)]
    versions = sorted({s.version for s in samples if s.version}, key=int)
    shares: dict[str, list[float]] = {v: [] for v in versions}
    errors = []
    for lo in edges[:-1]:
        window = [s for s in samples if lo <= s.t < lo + bucket]
        n = max(len(window), 1)
        for v in versions:
            shares[v].append(100 * sum(1 for s in window if s.version == v) / n)
        errors.append(100 * sum(1 for s in window if not s.ok) / n)
    fig, (top, bottom, psi, quality) = plt.subplots(4, 1, figsize=(11, 10), sharex=True, height_ratios=[3, 1, 2, 2])
    top.stackplot(edges[:-1], [shares[v] for v in versions], labels=[f"version {v}" for v in versions], step="post")
    top.set_ylabel("% of answers")
    top.set_ylim(0, 100)
    top.legend(loc="upper left")
    top.set_title("kubeforge demo: traffic by model version during the rollouts, the drift and the retrain")
    bottom.plot(edges[:-1], errors, color="crimson", drawstyle="steps-post")
    bottom.set_ylabel("% failed")
    bottom.set_ylim(0, max(5, max(errors) * 1.2))
    others = [points for feature, points in drift.psi.items() if feature not in SHIFTED]
    for feature in SHIFTED:
        points = drift.psi.get(feature, [])
        psi.plot([t for t, _ in points], [v for _, v in points], label=feature)
    if others:
        times = sorted({t for points in others for t, _ in points})
        highest_others = [max(v for points in others for u, v in points if u == t) for t in times]
        psi.plot(times, highest_others, color="grey", label=f"other {len(others)} features (highest)")
    psi.axhline(drift.threshold, color="black", linestyle="--", linewidth=1, label="alert threshold")
    psi.axvline(drift.shifted_at, color="orange", linewidth=1)
    psi.axvline(drift.alerted_at, color="crimson", linewidth=1)
    highest = max([drift.threshold, *(v for points in drift.psi.values() for _, v in points)])
    psi.set_ylim(0, highest * 1.15)
    for t, text in ((drift.shifted_at, "traffic shifts"), (drift.alerted_at, "alert in Alertmanager")):
        psi.annotate(text, (t, highest), xytext=(-3, 0), textcoords="offset points", ha="right", fontsize=8)
    psi.set_ylabel("PSI vs training data")
    psi.legend(loc="upper left", fontsize=8)
    for version, points in sorted(drift.accuracy.items(), key=lambda kv: int(kv[0])):
        quality.plot([t for t, _ in points], [v for _, v in points], label=f"version {version}")
    quality.axvline(drift.shifted_at, color="orange", linewidth=1)
    quality.axvline(drift.retrained_at, color="purple", linewidth=1)
    quality.annotate(
        "retrain starts", (drift.retrained_at, 1), xytext=(-3, -10), textcoords="offset points", ha="right", fontsize=8
    )
    quality.set_ylim(0.5, 1.02)
    quality.set_ylabel("live accuracy (labels)")
    quality.legend(loc="lower left", fontsize=8)
    quality.set_xlabel("seconds since traffic started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""`kubeforge demo`: the whole story on one machine, with live traffic and a picture at the end.

Train and register v1, serve it, send traffic through the gateway with tritonclient,
train v2 and watch the canary walk its steps and get promoted, then train a broken v3
(shuffled labels) and watch the analysis roll it back while no request fails.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core import kube
from . import runtime

GROUP, VERSION = "kubeforge.dev", "v1alpha1"


@dataclass
class Sample:
    t: float
    version: str | None
    ok: bool
    ms: float


@dataclass
class Traffic:
    """A background caller using tritonclient, as any OIP client would."""

    url: str
    model: str
    rows: list[list[float]]
    rate: float = 40.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import numpy as np
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url=self.url.removeprefix("http://"), connection_timeout=10)
        t0 = time.monotonic()
        while not self._stop.is_set():
            row = np.asarray([random.choice(self.rows)], dtype=np.float32)
            inp = httpclient.InferInput("features", list(row.shape), "FP32")
            inp.set_data_from_numpy(row)
            start = time.perf_counter()
            try:
                result = client.infer(self.model, [inp])
                version, ok = result.get_response().get("model_version"), True
            except Exception:  # any failure a caller would see counts
                version, ok = None, False
            self.samples.append(Sample(time.monotonic() - t0, version, ok, (time.perf_counter() - start) * 1000))
            self._stop.wait(1 / self.rate)


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
        return self._custom().get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def apply(self, filename: str, **replace: str) -> dict[str, Any]:
        text = (self.examples / filename).read_text()
        for key, value in replace.items():
            text = text.replace(key, value)
        obj = yaml.safe_load(text)
        obj["metadata"]["namespace"] = self.ns
        kube.apply(self.api, obj)
        return obj

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

    # --- the story ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import numpy as np
        from sklearn.datasets import load_breast_cancer

        self.say("starting the local platform (control plane, MLflow, operators, runner)")
        runtime.up(self.data_dir)
        self.api = kube.api_client(runtime.Layout(self.data_dir).kubeconfig)
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

        v1 = self.train("trainingjob-v1.yaml", "cancer-v1", DATASET=str(clean))
        self.apply("modeldeployment.yaml")
        md = self.wait(
            "modeldeployments",
            "cancer",
            lambda o: _cond(o, "Ready") == "True",
            _ready_line,
        )
        url = md["status"]["url"].split("/v2/")[0]
        self.say(f"serving at {md['status']['url']}; sending traffic with tritonclient")
        traffic = Traffic(url, "cancer", frame.drop(columns="target").to_numpy(dtype=float).tolist())
        traffic.start()
        try:
            v2 = self.train("trainingjob-v2.yaml", "cancer-v2", DATASET=str(clean))
            self.wait(
                "modeldeployments",
                "cancer",
                lambda o: (o.get("status") or {}).get("stableVersion") == v2["status"]["mlflow"]["modelVersion"],
                _rollout_line,
            )
            self.say("  canary promoted: version 2 is stable")
            v3 = self.train("trainingjob-v3-bad.yaml", "cancer-v3", SHUFFLED_DATASET=str(shuffled))
            bad_version = v3["status"]["mlflow"]["modelVersion"]
            final = self.wait(
                "modeldeployments",
                "cancer",
                lambda o: (o.get("status") or {}).get("rolledBackVersion") == bad_version,
                _rollout_line,
            )
            self.say(f"  rolled back: {_message(final, 'RolledBack')}")
            time.sleep(3)
        finally:
            traffic.stop()
        summary = summarize(traffic.samples, [v1, v2, v3], final)
        self.out.mkdir(parents=True, exist_ok=True)
        plot(traffic.samples, self.out / "rollout.png")
        (self.out / "summary.md").write_text(summary)
        print("\n" + summary)
        print(f"plot: {self.out / 'rollout.png'}")
        return {"samples": traffic.samples, "final": final}


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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(samples: list[Sample], jobs: list[dict[str, Any]], final: dict[str, Any]) -> str:
    """A markdown table: each version's accuracy, what it answered, its latency and its fate."""
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
        f"rollbacks: {1 if st.get('rolledBackVersion') else 0} ({_message(final, 'RolledBack')})",
    ]
    return "\n".join(lines) + "\n"


def plot(samples: list[Sample], path: Path, bucket: float = 2.0) -> None:
    """Share of answers per version and error rate over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    end = max(s.t for s in samples)
    edges = [i * bucket for i in range(int(end / bucket) + 2)]
    versions = sorted({s.version for s in samples if s.version}, key=int)
    shares = {v: [] for v in versions}
    errors = []
    for lo in edges[:-1]:
        window = [s for s in samples if lo <= s.t < lo + bucket]
        n = max(len(window), 1)
        for v in versions:
            shares[v].append(100 * sum(1 for s in window if s.version == v) / n)
        errors.append(100 * sum(1 for s in window if not s.ok) / n)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[3, 1])
    top.stackplot(edges[:-1], [shares[v] for v in versions], labels=[f"version {v}" for v in versions], step="post")
    top.set_ylabel("% of answers")
    top.set_ylim(0, 100)
    top.legend(loc="upper left")
    top.set_title("kubeforge demo: traffic by model version during the rollouts")
    bottom.plot(edges[:-1], errors, color="crimson", drawstyle="steps-post")
    bottom.set_ylabel("% failed")
    bottom.set_ylim(0, max(5, max(errors) * 1.2))
    bottom.set_xlabel("seconds since traffic started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

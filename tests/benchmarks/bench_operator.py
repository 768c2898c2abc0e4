"""ModelDeployment operator: apply-to-children latency, bulk convergence rate, memory.

Starts a local control plane, applies the CRDs, starts MLflow with one registered
model and alias, then the real operator process (`kubeforge operator run`, endpoints
addressing, or with --addressing dns a cluster's Services addressing). The control
plane has no kubelet, so no pod runs and no gateway becomes reachable; the operator
still resolves the version, creates every child and writes status, which is what a
user waits for after `kubectl apply`. Measures, in one run:

0. the physical limit: a plain client server-side applying the same children for --count
   resources (the operator's own plan, without the ModelDeployment label, so the operator
   never sees them) from the same 16 threads, before the operator starts; deleted again. Beside it,
   the same client making every write of the operator's path (the ModelDeployment's create, its children,
   its first status and event), which is what this API server allows for that path;
1. ``kubectl apply -f -`` of one ModelDeployment until its Triton Deployment and
   Service, gateway Deployment and Service and route ConfigMap all exist (--applies
   times, one at a time): p50 / p90 / max;
2. --count ModelDeployments created at once from a thread pool until every one has its
   children and a status with observedGeneration and stableVersion (seen through watches):
   resources per second, and as a share of both plain rates; the CPU each process spent per resource;
3. resident memory of the operator process tree after that, and its CPU seconds;
4. with --restart, the operator stopped and started again over every ModelDeployment, as an upgrade or a
   rescheduled pod does: how long until it is quiet again, its peak memory and what it holds once it has
   trimmed its heap, its CPU and the API requests it makes, lists included (none should be writes: nothing
   changed);
5. what --trainingjobs TrainingJobs waiting on their Jobs, and then --featureviews FeatureViews whose
   materialization Jobs run, cost over --idle seconds: API requests per resource per minute, and the
   operator's CPU;
6. with --restart and any of them, the operator restarted once more, over every resource of the three kinds.

Run from the repository root: .venv/bin/python -m tests.benchmarks.bench_operator [--count 500] [--applies 50]
[--restart] [--trainingjobs 200] [--featureviews 100] [--addressing dns]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import urllib3
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from kubeforge.api import API_VERSION, crdgen
from kubeforge.core import kube
from kubeforge.local import mlflow_server
from kubeforge.local.controlplane import ControlPlane
from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from kubeforge.operators import heap
from kubeforge.operators.deployment import children, rollout
from kubeforge.operators.labels import MODELDEPLOYMENT
from kubeforge.operators.settings import Settings

MODEL, ALIAS = "bench-model", "champion"
GROUP, VERSION = API_VERSION.split("/")
POLL_S = 0.01  # apply-latency polling; one poll is 3 list calls, so a cycle stays under 20 ms
TARGETS = {"p50_ms": 300.0, "rate": 50.0, "share": 0.8, "rss_mb": 150.0}
THREADS = 16  # client threads creating resources, for the operator's bulk phase and the plain client alike


def _manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": MODEL, "alias": ALIAS}},
    }


def _expected(name: str, version: str) -> set[tuple[str, str]]:
    """(kind, name) of every child the operator creates for a ModelDeployment serving version."""
    return {
        ("Deployment", children.version_name(name, version)),
        ("Service", children.version_name(name, version)),
        ("Deployment", children.gateway_name(name)),
        ("Service", children.gateway_name(name)),
        ("ConfigMap", children.routes_name(name)),
    }


def _raw_items(call: Callable[..., Any], namespace: str, **kwargs: Any) -> list[dict[str, Any]]:
    """A list call's items as plain JSON: the client's model classes cost seconds at 1,000 objects."""
    resp = call(namespace, _preload_content=False, **kwargs)
    return json.loads(resp.data)["items"]


def _children(api: client.ApiClient, namespace: str, selector: str | None = None) -> set[tuple[str, str]]:
    """(kind, name) of the Deployments, Services and ConfigMaps labelled as a ModelDeployment's children."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    calls = {
        "Deployment": apps.list_namespaced_deployment,
        "Service": core.list_namespaced_service,
        "ConfigMap": core.list_namespaced_config_map,
    }
    selector = selector or MODELDEPLOYMENT
    return {
        (kind, item["metadata"]["name"])
        for kind, call in calls.items()
        for item in _raw_items(call, namespace, label_selector=selector)
    }


def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def rss_mb(pid: int) -> float:
    """VmRSS of pid and its descendants, in MB."""
    total_kb = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb * 1024 / 1e6


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def control_plane_cpu(pids: list[int]) -> float:
    """CPU seconds the API server and etcd have used."""
    return sum(cpu_seconds(pid) for pid in pids)


def api_requests(api: client.ApiClient) -> Counter[tuple[str, str]]:
    """The API server's request counts by (verb, resource, subresource), from its own metrics."""
    resp = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    resp.read()
    counts: Counter[tuple[str, str]] = Counter()
    for line in resp.data.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            what = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            counts[(labels.get("verb", ""), what)] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _per_resource(
    before: Counter[tuple[str, str]], after: Counter[tuple[str, str]], count: int, created: int = 0, lists: bool = False
) -> str:
    """Writes and reads per resource between two api_requests snapshots, leaving out watches, the benchmark's
    creates of the ModelDeployments themselves and, unless lists, lists (the benchmark's own polling)."""
    diff = after - before
    diff[("POST", "modeldeployments")] -= created
    left_out = ("WATCH",) if lists else ("LIST", "WATCH")
    kept = {key: n for key, n in diff.items() if n > 0 and key[0] not in left_out}
    rows = sorted((n / count, verb, what) for (verb, what), n in kept.items())
    total = sum(r[0] for r in rows)
    return f"{total:.1f}: " + ", ".join(f"{verb} {what} {n:.1f}" for n, verb, what in reversed(rows) if n >= 0.05)


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank quantile; q = 0.5 is the median's upper neighbour for an even count, 1.0 the max."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def install_crds(api: client.ApiClient) -> None:
    """Apply the CRDs and wait until the API server serves them."""
    for kind in crdgen.KINDS:
        kube.apply(api, crdgen.crd(kind))
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + 60
    for kind in crdgen.KINDS:
        while not any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(kind.crd.crd_name).status.conditions or []
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {kind.crd.crd_name} not established")
            time.sleep(0.1)


def register_model(url: str) -> str:
    """One registered version with an alias: the operator only resolves it, nothing is downloaded."""
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=url, registry_uri=url)
    ml.create_registered_model(MODEL)
    version = ml.create_model_version(MODEL, source="s3://models/unused").version
    ml.set_registered_model_alias(MODEL, ALIAS, version)
    return str(version)


@contextlib.contextmanager
def operator(kubeconfig: Path, mlflow_url: str, log: Path) -> Iterator[int]:
    """The operator as users run it locally; yields its pid once its liveness endpoint answers."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBEFORGE_MLFLOW_TRACKING_URI": mlflow_url,
        "KUBEFORGE_FEAST_DIR": str(log.parent / "features"),
    }
    argv = [sys.executable, "-m", "kubeforge.cli", "operator", "run", "--liveness", f"http://127.0.0.1:{port}/healthz"]
    proc = spawn(argv, log, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=90)
        yield proc.pid
    finally:
        terminate(proc.pid)


def _plain_plan(owner: dict[str, Any], version: str, settings: Settings) -> rollout.Plan:
    """The operator's own plan for a new ModelDeployment serving version, its children without the label that
    would show them to the operator."""
    p = rollout.plan(owner, rollout.Resolved(stable=version), rollout.Observed(), None, settings, datetime.now(UTC))
    for obj in p.apply:
        del obj["metadata"]["labels"][MODELDEPLOYMENT]
    return p


def _plain_children(namespace: str, name: str, version: str, settings: Settings) -> list[dict[str, Any]]:
    owner = {**_manifest(name), "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}}
    return _plain_plan(owner, version, settings).apply


def _delete_all(api: client.ApiClient, namespace: str, written: list[list[dict[str, Any]]]) -> None:
    """Delete what a plain client wrote, from THREADS threads."""
    with ThreadPoolExecutor(THREADS) as pool:
        for objs in written:
            for obj in objs:
                pool.submit(kube.delete, api, obj["apiVersion"], obj["kind"], obj["metadata"]["name"], namespace)


def plain_client(
    api: client.ApiClient, version: str, count: int, control_plane: list[int]
) -> tuple[float, float, float]:
    """Seconds a plain client takes to server-side apply the same children for count resources from THREADS
    threads (what this API server allows, so the limit of the operator's convergence), and the CPU seconds of the
    control plane and of the client meanwhile. Deleted afterwards."""
    namespace = "bench-plain"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    settings = Settings.from_env()
    work = [_plain_children(namespace, f"plain-{i}", version, settings) for i in range(count)]
    start, cpu, own = time.perf_counter(), control_plane_cpu(control_plane), time.process_time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda objs: [kube.apply(api, obj) for obj in objs], work))
    elapsed, cpu, own = time.perf_counter() - start, control_plane_cpu(control_plane) - cpu, time.process_time() - own
    _delete_all(api, namespace, work)
    return elapsed, cpu, own


def plain_writes(api: client.ApiClient, version: str, count: int) -> float:
    """Seconds a plain client takes, from THREADS threads, to make every write the operator's path makes for count
    new ModelDeployments: create each, apply its children, write its first status and post its event, as the
    operator would (its own plan, with kube.write_status). Before the operator starts, so it never sees them;
    deleted afterwards."""
    namespace = "bench-writes"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    settings = Settings.from_env()

    def one(name: str) -> list[dict[str, Any]]:
        created = kube.create(api, {**_manifest(name), "metadata": {"name": name, "namespace": namespace}})
        assert created is not None
        p = _plain_plan(created, version, settings)
        for obj in p.apply:
            kube.apply(api, obj)
        kube.write_status(api, created, {}, p.status, p.events, component="bench")
        return [created, *p.apply]

    kube.resource(api, API_VERSION, "ModelDeployment")  # discovery once, before the threads ask for it at once
    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        written = list(pool.map(one, [f"writes-{i}" for i in range(count)]))
    elapsed = time.perf_counter() - start
    _delete_all(api, namespace, written)
    return elapsed


def apply_latency(
    api: client.ApiClient, kubeconfig: Path, version: str, applies: int
) -> tuple[list[float], list[float]]:
    """Seconds from starting `kubectl apply` until all children exist, and until kubectl returned."""
    namespace = "bench-apply"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    to_children, to_kubectl = [], []
    for i in range(applies):
        name = f"apply-{i}"
        want = _expected(name, version)
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["kubectl", "apply", "-n", namespace, "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(_manifest(name)).encode())
        proc.stdin.close()
        kubectl_done = None
        deadline = start + 60
        while True:
            if kubectl_done is None and proc.poll() is not None:
                kubectl_done = time.perf_counter()
                if proc.returncode:
                    raise RuntimeError(f"kubectl apply failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            if kubectl_done is not None and want <= _children(api, namespace, f"{MODELDEPLOYMENT}={name}"):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"children of {name} missing after 60 s")
            time.sleep(POLL_S)
        to_children.append(time.perf_counter() - start)
        to_kubectl.append(kubectl_done - start)
    return to_children, to_kubectl


def _watch(call: Callable[..., Any], namespace: str, seen: Callable[[dict[str, Any]], None], **kwargs: Any) -> None:
    """Call seen with each object a watch of call's kind in namespace brings, from a daemon thread, from now on."""
    listed = call(namespace, _preload_content=False, **kwargs)
    version = json.loads(listed.data)["metadata"]["resourceVersion"]

    def run() -> None:
        resp = call(namespace, watch=True, resource_version=version, _preload_content=False, **kwargs)
        with contextlib.suppress(urllib3.exceptions.HTTPError):  # the API server stopping at the end
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event["type"] in ("ADDED", "MODIFIED"):
                    seen(event["object"])

    threading.Thread(target=run, daemon=True).start()


def converge(api: client.ApiClient, version: str, count: int) -> float:
    """Seconds from the first create until all count ModelDeployments have children and status, as watches of
    each kind bring them (a list of every child each cycle would take a share of the API server's CPU)."""
    namespace = "bench-bulk"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    custom = client.CustomObjectsApi(api)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    names = [f"bulk-{i}" for i in range(count)]
    want = set().union(*(_expected(n, version) for n in names))
    have: set[tuple[str, str]] = set()
    done: set[str] = set()
    changed = threading.Condition()

    def child(kind: str) -> Callable[[dict[str, Any]], None]:
        def seen(obj: dict[str, Any]) -> None:
            with changed:
                have.add((kind, obj["metadata"]["name"]))
                changed.notify()

        return seen

    def modeldeployment(md: dict[str, Any]) -> None:
        status = md.get("status") or {}
        with changed:
            if (
                status.get("observedGeneration") == md["metadata"]["generation"]
                and status.get("stableVersion") == version
            ):
                done.add(md["metadata"]["name"])
            changed.notify()

    for kind, call in (
        ("Deployment", apps.list_namespaced_deployment),
        ("Service", core.list_namespaced_service),
        ("ConfigMap", core.list_namespaced_config_map),
    ):
        _watch(call, namespace, child(kind), label_selector=MODELDEPLOYMENT)
    _watch(
        lambda ns, **kw: custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", **kw),
        namespace,
        modeldeployment,
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(
            pool.map(
                lambda n: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "modeldeployments", _manifest(n)
                ),
                names,
            )
        )
    created = time.perf_counter() - start
    print(f"  created {count} in {created:.2f} s", flush=True)
    deadline = start + max(120.0, count)
    with changed:
        while not (want <= have and len(done) == count):
            if not changed.wait(timeout=deadline - time.perf_counter()):
                raise TimeoutError(f"{len(want - have)} children, {count - len(done)} statuses missing")
        return time.perf_counter() - start


def _create_all(api: client.ApiClient, namespace: str, plural: str, bodies: list[dict[str, Any]]) -> float:
    """Create bodies in a new namespace from THREADS threads; the perf_counter() at the start."""
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    custom = client.CustomObjectsApi(api)
    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda b: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, b), bodies))
    return start


def _jobs_for_all(api: client.ApiClient, namespace: str, count: int, start: float, what: str) -> float:
    """Seconds from start until namespace holds count Jobs."""
    while len(client.BatchV1Api(api).list_namespaced_job(namespace).items) < count:
        if time.perf_counter() - start > max(120.0, count):
            raise TimeoutError(f"{what} without their Job")
        time.sleep(0.5)
    return time.perf_counter() - start


def waiting_trainingjobs(api: client.ApiClient, count: int) -> float:
    """Seconds from the first create until all count TrainingJobs have their first attempt's Job."""
    bodies = [
        {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "metadata": {"name": f"train-{i}"},
            "spec": {
                "model": {"name": f"train-{i}", "architecture": "logistic"},
                "dataset": {"uri": "/data/x.csv", "target": "y"},
            },
        }
        for i in range(count)
    ]
    start = _create_all(api, "bench-training", "trainingjobs", bodies)
    return _jobs_for_all(api, "bench-training", count, start, "TrainingJobs")


def waiting_featureviews(api: client.ApiClient, count: int, source: Path) -> float:
    """Seconds from the first create until all count FeatureViews are registered in Feast and have their first
    materialization Job (which no kubelet runs here)."""
    now = datetime.now(UTC)
    data = {"customer_id": [1, 2], "spend": [1.5, 2.0], "event_timestamp": [now, now]}
    pd.DataFrame(data).to_parquet(source)
    spec = {
        "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
        "features": [{"name": "spend", "dtype": "Float64"}],
        "source": {"path": str(source)},
        "ttl": "24h",
        "materialization": {"interval": "1h"},
    }
    bodies = [
        {"apiVersion": API_VERSION, "kind": "FeatureView", "metadata": {"name": f"view-{i}"}, "spec": spec}
        for i in range(count)
    ]
    start = _create_all(api, "bench-features", "featureviews", bodies)
    return _jobs_for_all(api, "bench-features", count, start, "FeatureViews")


def idle_cost(api: client.ApiClient, pid: int, count: int, idle: float) -> tuple[float, float]:
    """(API requests per resource per minute, operator CPU in % of a core) over idle seconds, after 10 s for
    the events of the operator's own writes and kopf's idle time before timers tick."""
    time.sleep(10)
    before, cpu = api_requests(api), cpu_seconds(pid)
    time.sleep(idle)
    per_minute = sum((api_requests(api) - before).values()) / count / idle * 60
    return per_minute, (cpu_seconds(pid) - cpu) / idle * 100


@dataclass
class Restart:
    seconds: float
    """From the new operator's start until its CPU fell quiet (under QUIET_CPU of a core for QUIET_S)."""
    cpu: float
    rss_peak: float
    rss_settled: float
    """TRIMMED_S after it fell quiet, once the operator has handed the restart's free heap back (operators.heap)."""
    requests: str


QUIET_S, QUIET_CPU = 2.0, 0.05
TRIMMED_S = 2 * heap.CHECK_S + 5


def restart(
    stack: contextlib.ExitStack, api: client.ApiClient, pid: int, start: Callable[[], Iterator[int]]
) -> tuple[int, Restart]:
    """Stop the operator at pid, start another with start, and follow it until it is quiet; its pid and what the
    restart cost."""
    terminate(pid)
    before, began = api_requests(api), time.monotonic()
    pid = stack.enter_context(start())
    samples = [(time.monotonic(), cpu_seconds(pid))]
    peak, busy_until = rss_mb(pid), time.monotonic()
    while time.monotonic() - busy_until < QUIET_S:
        time.sleep(0.25)
        now, cpu = time.monotonic(), cpu_seconds(pid)
        samples.append((now, cpu))
        peak = max(peak, rss_mb(pid))
        window = [(t, c) for t, c in samples if t >= now - QUIET_S]
        if now - window[0][0] < QUIET_S / 2 or (cpu - window[0][1]) / (now - window[0][0]) >= QUIET_CPU:
            busy_until = now
    after = api_requests(api)
    time.sleep(TRIMMED_S)
    cost = Restart(busy_until - began, samples[-1][1], peak, rss_mb(pid), _per_resource(before, after, 1, lists=True))
    return pid, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="ModelDeployments created at once")
    parser.add_argument("--applies", type=int, default=50, help="one-at-a-time kubectl applies")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to watch the operator after convergence")
    parser.add_argument("--trainingjobs", type=int, default=200, help="TrainingJobs left waiting on their Jobs")
    parser.add_argument("--featureviews", type=int, default=100, help="FeatureViews left waiting on their Jobs")
    parser.add_argument("--idle", type=float, default=40.0, help="seconds to count what waiting resources cost")
    parser.add_argument("--restart", action="store_true", help="restart the operator over every ModelDeployment")
    parser.add_argument(
        "--addressing",
        choices=["endpoints", "dns"],
        default="endpoints",
        help="how route tables address versions: by their ready replicas (the local runtime) or their Services (a "
        "cluster; no pod runs here, so no name is looked up)",
    )
    args = parser.parse_args()
    os.environ["KUBEFORGE_SERVICE_ADDRESSING"] = args.addressing  # the operator's plans and the plain client's alike
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kubeforge-bench-op-")))
        cp = stack.enter_context(ControlPlane())
        api = kube.api_client(cp.kubeconfig)
        install_crds(api)
        ml = mlflow_server.start(work / "mlflow")
        stack.callback(ml.stop)
        version = register_model(ml.url)
        print(f"0. a plain client applying the children of {args.count} resources", flush=True)
        assert cp.state is not None
        control_plane = [cp.state.apiserver_pid, cp.state.etcd_pid]
        plain, cp_plain, client_plain = plain_client(api, version, args.count, control_plane)
        writes = plain_writes(api, version, args.count)
        log = work / "operator.log"
        try:
            pid = stack.enter_context(operator(cp.kubeconfig, ml.url, log))
        except BaseException:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        cpu_idle, rss_start = cpu_seconds(pid), rss_mb(pid)
        print(f"operator pid {pid} up; rss {rss_start:.0f} MB; cpu {cpu_idle:.1f} s", flush=True)

        print(f"1. kubectl apply -> children, {args.applies} one at a time", flush=True)
        lat, kubectl = apply_latency(api, cp.kubeconfig, version, args.applies)
        cpu_after_applies = cpu_seconds(pid)
        rss_applies = rss_mb(pid)

        print(f"2. {args.count} ModelDeployments at once", flush=True)
        before, cp_cpu, own_cpu = api_requests(api), control_plane_cpu(control_plane), time.process_time()
        elapsed = converge(api, version, args.count)
        cp_bulk, own_bulk = control_plane_cpu(control_plane) - cp_cpu, time.process_time() - own_cpu
        converged_at = api_requests(api)
        cpu_after_converge = cpu_seconds(pid)
        rss_converged = rss_mb(pid)
        rss_peak = rss_converged
        settle_end = time.monotonic() + args.settle
        while time.monotonic() < settle_end:
            time.sleep(0.5)
            rss_peak = max(rss_peak, rss_mb(pid))
        cpu_settled = cpu_seconds(pid)
        rss_settled = rss_mb(pid)
        requests_settled = api_requests(api)

        restarted = None
        if args.restart:
            print(f"4. the operator restarted over {args.applies + args.count} ModelDeployments", flush=True)
            pid, restarted = restart(stack, api, pid, lambda: operator(cp.kubeconfig, ml.url, log))

        waiting = []
        if args.trainingjobs:
            print(f"5. {args.trainingjobs} TrainingJobs waiting on their Jobs", flush=True)
            created = waiting_trainingjobs(api, args.trainingjobs)
            cost = idle_cost(api, pid, args.trainingjobs, args.idle)
            waiting.append(("TrainingJobs", args.trainingjobs, created, *cost))
        if args.featureviews:
            print(f"5. {args.featureviews} FeatureViews waiting on their materialization Jobs", flush=True)
            created = waiting_featureviews(api, args.featureviews, work / "source.parquet")
            cost = idle_cost(api, pid, args.featureviews, args.idle)
            waiting.append(("FeatureViews", args.featureviews, created, *cost))
        restarted_all = None
        if args.restart and waiting:
            every = sum(count for _, count, *_ in waiting) + args.applies + args.count
            print(f"6. the operator restarted over {every} resources of every kind", flush=True)
            pid, restarted_all = restart(stack, api, pid, lambda: operator(cp.kubeconfig, ml.url, log))
        load_end = os.getloadavg()

    total = args.applies + args.count
    p50 = _pct(lat, 0.5) * 1000
    after = [a - k for a, k in zip(lat, kubectl, strict=True)]
    rate = args.count / elapsed
    plain_rate = args.count / plain
    settled_cpu = (cpu_settled - cpu_after_converge) / args.settle * 100
    op_bulk = cpu_after_converge - cpu_after_applies
    rows = [
        ("load average (1 min) at start / end", f"{load_start[0]:.2f} / {load_end[0]:.2f} on {os.cpu_count()} CPUs"),
        ("apply -> children p50 / p90 / max", _ms(lat, 0.5, 0.9, 1.0)),
        ("  kubectl apply itself, p50", _ms(kubectl, 0.5)),
        ("  children after kubectl returned, p50 / p90", _ms(after, 0.5, 0.9)),
        (f"  target p50 <= {TARGETS['p50_ms']:.0f} ms", _verdict(p50 <= TARGETS["p50_ms"])),
        (f"plain client, children of {args.count}", f"{plain:.2f} s = {plain_rate:.1f} resources/s"),
        (f"{args.count} at once: converged in", f"{elapsed:.2f} s = {rate:.1f} resources/s"),
        (f"  target >= {TARGETS['rate']:.0f}/s", _verdict(rate >= TARGETS["rate"])),
        ("  share of the plain client's rate", f"{rate / plain_rate:.0%}"),
        (f"  target >= {TARGETS['share']:.0%}", _verdict(rate / plain_rate >= TARGETS["share"])),
        (
            "  plain client making all the operator path's writes; share",
            f"{args.count / writes:.1f} resources/s; {rate / (args.count / writes):.0%}",
        ),
        (
            "  CPU per resource, plain client: API server + etcd / client",
            f"{cp_plain / args.count * 1000:.1f} / {client_plain / args.count * 1000:.1f} ms",
        ),
        (
            "  ... operator: API server + etcd / operator / creates and watches",
            f"{cp_bulk / args.count * 1000:.1f} / {op_bulk / args.count * 1000:.1f} / "
            f"{own_bulk / args.count * 1000:.1f} ms",
        ),
        ("  operator CPU / API server + etcd CPU, same bulk", f"{op_bulk / cp_bulk:.2f}"),
        ("  API requests per resource to converge", _per_resource(before, converged_at, args.count, args.count)),
        (f"  ... in the {args.settle:.0f} s after", _per_resource(converged_at, requests_settled, args.count)),
        (
            f"operator RSS at {total} resources, converged / peak / settled",
            f"{rss_converged:.0f} / {rss_peak:.0f} / {rss_settled:.0f} MB",
        ),
        (f"  target <= {TARGETS['rss_mb']:.0f} MB", _verdict(rss_peak <= TARGETS["rss_mb"])),
        ("  after startup / after the applies", f"{rss_start:.0f} / {rss_applies:.0f} MB"),
        (
            "operator CPU: startup / applies / bulk",
            f"{cpu_idle:.1f} / {cpu_after_applies - cpu_idle:.1f} / {cpu_after_converge - cpu_after_applies:.1f} s",
        ),
        (f"operator CPU over {args.settle:.0f} s after convergence", f"{settled_cpu:.0f} % of a core"),
    ]
    if restarted is not None:
        rows += _restart_rows(f"restarted over {total}", restarted)
    for kind, count, created, per_minute, idle_cpu in waiting:
        rows += [
            (f"{count} {kind}: each has its Job after", f"{created:.1f} s"),
            (f"  API requests per resource per minute, waiting ({args.idle:.0f} s)", f"{per_minute:.2f}"),
            ("  operator CPU meanwhile", f"{idle_cpu:.0f} % of a core"),
        ]
    if restarted_all is not None:
        kinds = " + ".join(f"{count} {kind}" for kind, count, *_ in waiting)
        rows += _restart_rows(f"restarted over {total} ModelDeployments + {kinds}", restarted_all)
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _restart_rows(what: str, restarted: Restart) -> list[tuple[str, str]]:
    return [
        (f"{what}: quiet after", f"{restarted.seconds:.1f} s (operator CPU {restarted.cpu:.1f} s)"),
        (f"  RSS peak / {TRIMMED_S:.0f} s after", f"{restarted.rss_peak:.0f} / {restarted.rss_settled:.0f} MB"),
        ("  API requests until quiet, in all", restarted.requests),
    ]


def _ms(values: list[float], *quantiles: float) -> str:
    return " / ".join(f"{_pct(values, q) * 1000:.0f}" for q in quantiles) + " ms"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()

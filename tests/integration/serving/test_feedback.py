"""Delayed labels at a real gateway in front of a real tritonserver: labels join the answers they label, live
accuracy shows on /metrics, unknown and expired ids are counted, bad batches are refused naming the field, and the
labelled requests come back as a data set the trainer reads over HTTP and the CLI writes to a file."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kubeforge import cli
from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core import modelcard
from kubeforge.core import modelcontract as mc
from kubeforge.training import datasets
from kubeforge.training.errors import TrainerError
from kubeforge.training.main import main as train

from .conftest import FEATURES, N_FEATURES, body, drift_table, table

pytestmark = pytest.mark.integration

TOKEN = "feedback-token-51c2"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def identified(request_id: str, x0: float) -> bytes:
    """One row whose class is pos when x0 > 0 (every version of the classifier agrees on the sign)."""
    return json.dumps({"id": request_id, **json.loads(body([[x0] + [0.0] * (N_FEATURES - 1)]))}).encode()


def answer_all(url: str, ids: list[str], headers: dict[str, str] | None = None) -> dict[str, str]:
    """Send one request per id, pos for even positions and neg for odd; the class each was answered with."""
    classes = {}
    for i, request_id in enumerate(ids):
        resp = httpx.post(
            f"{url}/v2/models/clf/infer", content=identified(request_id, 1.0 - 2 * (i % 2)), headers=headers
        )
        assert resp.status_code == 200 and resp.headers["kubeforge-request-id"] == request_id
        classes[request_id] = "pos" if i % 2 == 0 else "neg"
    return classes


def flipped(label: str) -> str:
    return "neg" if label == "pos" else "pos"


def wait_for_lines(path: Path, count: int, timeout: float = 30) -> list[dict]:
    """The JSON lines of path (and its rotations) once count are there: the payload writer works after answering."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for f in sorted(path.parent.glob(path.name + "*")) for line in f.read_text().splitlines()]
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)


def test_labels_join_answers_and_give_live_accuracy_and_a_training_data_set(
    gateway, triton, registered, mlflow, tmp_path
):
    logs = tmp_path / "payloads"
    routes = drift_table(mlflow.url, registered, triton.url)  # the stable version's entry names its classes
    routes["models"]["clf"]["feedback"] = {"window": "10m", "minLabels": 20}
    routes["models"]["clf"]["payloadLog"] = {"samplePercent": 100}
    gw = gateway(routes, args=("--payload-log-dir", str(logs)))
    ids = [f"order-{i}" for i in range(40)]
    answered = answer_all(gw.url, ids)
    stable = {"version": registered.stable, "role": "stable"}
    feedback = f"{gw.url}/v2/models/clf/feedback"

    first = httpx.post(feedback, json={"labels": [{"id": i, "label": answered[i]} for i in ids[:10]]})
    assert first.status_code == 200 and first.json() == {"joined": 10, "unknown": 0, "expired": 0}
    assert gw.metric("kubeforge_live_labels", **stable) == 10
    assert "\nkubeforge_live_accuracy{" not in httpx.get(f"{gw.url}/metrics").text, "below minLabels: no accuracy"

    # The rest: ten more right (as class indices), twenty wrong, and an id no answer carried.
    rest = [{"id": i, "label": 1 if answered[i] == "pos" else 0} for i in ids[10:20]]
    rest += [{"id": i, "label": flipped(answered[i])} for i in ids[20:]]
    second = httpx.post(feedback, json=[*rest, {"id": "never-answered", "label": "pos"}])

    assert second.status_code == 200 and second.json() == {"joined": 30, "unknown": 1, "expired": 0}
    assert gw.metric("kubeforge_live_accuracy", **stable) == pytest.approx(0.5)
    assert gw.metric("kubeforge_live_labels", **stable) == 40
    assert gw.metric("kubeforge_feedback_labels_total", result="joined", **stable) == 40
    assert gw.metric("kubeforge_feedback_labels_total", version="", role="", result="unknown") == 1

    labels = wait_for_lines(logs / "clf.labels.jsonl", 40)
    assert sorted(item["requestId"] for item in labels) == sorted(ids)
    assert {item["label"] for item in labels} == {"pos", "neg"}, "classes as the version was trained on them"
    wait_for_lines(logs / "clf.jsonl", 40)

    url = f"{gw.url}/v2/models/clf/feedback/dataset?since=1h&target=target"
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(url)
    assert list(frame.columns) == [*FEATURES, "target", "event_timestamp"] and len(frame) == 40
    by_sign = frame.groupby(frame["f0"] > 0)["target"].value_counts().to_dict()
    assert by_sign == {(True, "pos"): 10, (True, "neg"): 10, (False, "neg"): 10, (False, "pos"): 10}

    data = datasets.load(DatasetSpec(uri=url, format="csv", target="target"), "classification")
    assert data.rows == 40 and data.features == FEATURES and sorted(data.classes) == ["neg", "pos"]


def test_a_retrain_on_feedback_says_how_many_labelled_rows_its_data_set_left_out(
    gateway, triton, registered, mlflow, tmp_path, capsys
):
    """Requests pinned to the canary, a version registered without feature names, are answered and labelled with
    the rest; a data set of the stable version's features leaves their rows out. The trainer trains on the others
    and says how many it left out: in its log, in the registered version's tags and in its model card."""
    logs = tmp_path / "payloads"
    routes = drift_table(mlflow.url, registered, triton.url)
    routes["models"]["clf"].update({"feedback": {"minLabels": 1}, "payloadLog": {"samplePercent": 100}})
    gw = gateway(routes, args=("--payload-log-dir", str(logs)))
    answered = answer_all(gw.url, [f"stable-{i}" for i in range(20)])
    for i in range(4):
        pinned = f"{gw.url}/v2/models/clf/versions/{registered.canary}/infer"
        assert httpx.post(pinned, content=identified(f"canary-{i}", 1.0)).status_code == 200
        answered[f"canary-{i}"] = "pos"
    labels = [{"id": i, "label": int(label == "pos")} for i, label in answered.items()]
    joined = httpx.post(f"{gw.url}/v2/models/clf/feedback", json=labels)
    assert joined.json().get("joined") == 24, joined.text
    wait_for_lines(logs / "clf.jsonl", 24)
    wait_for_lines(logs / "clf.labels.jsonl", 24)
    job = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "clf-retrain", "namespace": "team-a"},
        "spec": {
            "model": {"name": "clf-from-feedback", "framework": "sklearn", "estimator": "LogisticRegression"},
            "dataset": {"uri": f"{gw.url}/v2/models/clf/feedback/dataset?since=1h", "format": "csv", "target": "label"},
        },
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    capsys.readouterr()

    assert train(["--spec", str(tmp_path / "job.yaml"), "--tracking-uri", mlflow.url]) == 0

    out = capsys.readouterr().out
    assert "dataset: 20 labelled rows; 4 more left out, answered by model versions without one of its features" in out
    result = json.loads(out.strip().splitlines()[-1])["kubeforge.result"]
    client = MlflowClient(mlflow.url)
    version = client.get_model_version("clf-from-feedback", result["modelVersion"])
    assert version.tags[mc.TAG_DATASET_ROWS] == "20" and version.tags[mc.TAG_DATASET_ROWS_LEFT_OUT] == "4"
    card = modelcard.ModelCard.model_validate_json(
        Path(client.download_artifacts(result["runId"], modelcard.CARD_JSON, str(tmp_path))).read_text()
    )
    assert (card.dataset.rows, card.dataset.rows_left_out) == (20, 4)
    assert "- left out: 4 labelled rows answered by versions without its features" in version.description
    lineage = ["lineage", "model", "clf-from-feedback", version.version, "--json", "--tracking-uri", mlflow.url]
    walked = CliRunner().invoke(cli.main, [*lineage, "--kubeconfig", "/no"])
    assert walked.exit_code == 0, walked.output
    assert json.loads(walked.output)["versions"][0]["data"]["rowsLeftOut"] == 4


def test_late_and_unknown_labels_are_counted_and_bad_batches_refused_whole(gateway, triton, registered):
    routes = table(registered, triton.url, feedback={"ttl": "1s", "minLabels": 1})
    gw = gateway(routes)
    answer_all(gw.url, ["late", "kept"])
    feedback = f"{gw.url}/v2/models/clf/feedback"
    secret = "label-value-8812"

    refused = {
        "not JSON": httpx.post(feedback, content=b"{" + secret.encode()),
        "labels[1].id is missing": httpx.post(feedback, json=[{"id": "kept", "label": 1}, {"label": 0}]),
        "labels[0].label has the wrong type": httpx.post(feedback, json=[{"id": "kept", "label": {secret: 1}}]),
        "labels[0].label must be a class index 0..1": httpx.post(feedback, json=[{"id": "kept", "label": secret}]),
        "send them in batches": httpx.post(feedback, json=[{"id": "kept", "label": 1}] * 10_001),
    }
    for names, resp in refused.items():
        assert 400 <= resp.status_code < 500 and names in resp.json()["error"], (names, resp.text)
        assert secret not in resp.text
    assert gw.metric("kubeforge_feedback_labels_total", result="joined") == 0, "nothing of a refused batch applied"

    time.sleep(1.2)  # let the ttl pass
    resp = httpx.post(feedback, json={"labels": [{"id": "late", "label": 0}, {"id": "nobody", "label": 1}]})

    assert resp.json() == {"joined": 0, "unknown": 1, "expired": 1}
    assert gw.metric("kubeforge_feedback_labels_total", version="", role="", result="expired") == 1
    assert httpx.get(f"{gw.url}/v2/models/clf/feedback/dataset").status_code == 404, "no payload log to build from"


def kubeforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeforge.cli", *args], capture_output=True, text=True, timeout=120)


def test_the_cli_sends_a_label_file_and_writes_the_data_set(gateway, triton, registered, tmp_path, monkeypatch):
    routes = table(registered, triton.url, feedback={"minLabels": 1}, payloadLog={"samplePercent": 100})
    logs = tmp_path / "payloads"
    gw = gateway(routes, tokens=f"{TOKEN} clf", args=("--payload-log-dir", str(logs)))
    ids = [f"cli-{i}" for i in range(6)]
    answered = answer_all(gw.url, ids, AUTH)
    label_file = tmp_path / "labels.jsonl"
    label_file.write_text("".join(json.dumps({"id": i, "label": int(answered[i] == "pos")}) + "\n" for i in ids) + "\n")
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text(json.dumps({"id": "cli-0", "label": 1}) + "\n" + json.dumps({"id": "cli-1", "label": 7}) + "\n")
    target = ("--model", "clf", "--url", gw.url, "--token", TOKEN)

    unauthorized = kubeforge("feedback", "--model", "clf", "--url", gw.url, str(label_file))
    bad = kubeforge("feedback", *target, str(bad_file))
    sent = kubeforge("feedback", *target, str(label_file))

    assert unauthorized.returncode != 0 and "the gateway refused" in unauthorized.stderr
    assert bad.returncode != 0 and f"{bad_file} line 2: label must be a class index" in bad.stderr, bad.stderr
    assert sent.returncode == 0, sent.stderr
    assert "joined 6, unknown 0, expired 0" in sent.stdout
    assert gw.metric("kubeforge_live_accuracy", version=registered.stable, role="stable") == 1.0

    wait_for_lines(logs / "clf.jsonl", 6)
    wait_for_lines(logs / "clf.labels.jsonl", 6)
    out = tmp_path / "out" / "feedback.parquet"
    written = kubeforge("dataset", "from-feedback", *target, "--since", "1h", "--out", str(out))

    assert written.returncode == 0, written.stderr
    assert "wrote 6 labelled rows" in written.stdout
    frame = pd.read_parquet(out)
    assert list(frame.columns) == [*(f"feature_{i}" for i in range(N_FEATURES)), "label", "event_timestamp"]
    assert sorted(frame["label"]) == [0, 0, 0, 1, 1, 1]
    some = tmp_path / "out" / "some.csv"
    chosen = kubeforge("dataset", "from-feedback", *target, "--features", "feature_1,feature_0", "--out", str(some))
    refused = kubeforge("dataset", "from-feedback", *target, "--features", "feature_0,feature_0", "--out", str(some))
    assert chosen.returncode == 0 and "wrote 6 labelled rows" in chosen.stdout, chosen.stderr
    assert list(pd.read_csv(some).columns) == ["feature_1", "feature_0", "label", "event_timestamp"]
    assert refused.returncode != 0 and "features must name feature columns once each" in refused.stderr
    none = kubeforge("dataset", "from-feedback", *target, "--features", "feature_9", "--out", str(some))
    assert none.returncode == 0 and "wrote 0 labelled rows" in none.stdout, none.stderr
    assert "left out 6 labelled rows answered by versions without one of its features" in none.stdout

    # A retrain's trainer reads the same data set with the token its TrainingJob's tokenSecretRef gives it.
    source = DatasetSpec(
        uri=f"{gw.url}/v2/models/clf/feedback/dataset?since=1h&target=label", format="csv", target="label"
    )
    with pytest.raises(TrainerError, match=r"spec\.dataset\.uri: cannot read .*401"):
        datasets.load(source, "classification")
    monkeypatch.setenv("KUBEFORGE_DATASET_TOKEN", TOKEN)
    assert datasets.load(source, "classification").rows == 6
    # Features no version answered with leave the trainer nothing, and it says where the rows went.
    none_source = source.model_copy(update={"uri": source.uri + "&features=feature_9"})
    with pytest.raises(TrainerError, match=r"is empty \(no rows\); it left out 6 labelled rows answered by model"):
        datasets.load(none_source, "classification")


def test_labels_and_data_sets_reach_the_gateway_replica_that_answered(gateway, triton, registered, mlflow, tmp_path):
    """Two replicas of one gateway, as behind a Service: whichever gets the labels or the data set request, the
    labels join where the answers were given and a bad batch is refused whole at both. A replica that does not
    answer makes the request fail with nothing applied; one that is gone is passed over."""
    routes = drift_table(mlflow.url, registered, triton.url)
    routes["models"]["clf"]["feedback"] = {"window": "10m", "minLabels": 1}
    routes["models"]["clf"]["payloadLog"] = {"samplePercent": 100}
    logs = {name: tmp_path / f"payloads-{name}" for name in "ab"}
    a = gateway(routes, args=("--payload-log-dir", str(logs["a"])))
    b = gateway(routes, args=("--payload-log-dir", str(logs["b"])))
    for gw in (a, b):  # the operator names every ready gateway pod in the table
        with_peers(gw, routes, [a.url, b.url])
    at_b = answer_all(b.url, [f"b-{i}" for i in range(10)])
    at_a = answer_all(a.url, [f"a-{i}" for i in range(10)])
    stable = {"version": registered.stable, "role": "stable"}
    labels = [{"id": i, "label": label} for i, label in {**at_b, **at_a}.items()]
    feedback = f"{b.url}/v2/models/clf/feedback"

    bad = [*labels[:17], {"id": "a-7", "label": "bogus"}, *labels[18:]]
    refused = httpx.post(feedback, json=bad)
    assert refused.status_code == 422 and "labels[17].label is not a class" in refused.json()["error"]
    assert a.metric("kubeforge_live_labels", **stable) == b.metric("kubeforge_live_labels", **stable) == 0

    joined = httpx.post(feedback, json=[*labels, {"id": "never-answered", "label": "pos"}])
    assert joined.status_code == 200 and joined.json() == {"joined": 20, "unknown": 1, "expired": 0}
    assert a.metric("kubeforge_live_labels", **stable) == b.metric("kubeforge_live_labels", **stable) == 10
    assert a.metric("kubeforge_live_accuracy", **stable) == b.metric("kubeforge_live_accuracy", **stable) == 1.0
    unknown = {"version": "", "role": "", "result": "unknown"}
    assert (
        a.metric("kubeforge_feedback_labels_total", **unknown),
        b.metric("kubeforge_feedback_labels_total", **unknown),
    ) == (0, 1)

    for name in "ab":
        wait_for_lines(logs[name] / "clf.labels.jsonl", 10)
        wait_for_lines(logs[name] / "clf.jsonl", 10)
    frame = pd.read_csv(f"{b.url}/v2/models/clf/feedback/dataset?since=1h&target=target")
    assert len(frame) == 20 and list(frame.columns) == [*FEATURES, "target", "event_timestamp"]
    assert list(frame["event_timestamp"]) == sorted(frame["event_timestamp"]), "oldest first across replicas"
    assert frame.groupby(frame["f0"] > 0)["target"].value_counts().to_dict() == {(True, "pos"): 10, (False, "neg"): 10}

    # A replica that does not answer may still remember answers: the batch fails naming it, nothing applied.
    answer_all(b.url, ["b-late"])
    late = [{"id": "b-late", "label": "pos"}, {"id": "answered-by-a", "label": "pos"}]
    hung = socket.socket()  # takes connections into its backlog and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        with_peers(b, routes, [a.url, b.url, hung_url])
        stuck = httpx.post(feedback, json=late, timeout=30)
        assert stuck.status_code == 503 and hung_url in stuck.json()["error"]
        assert "nothing was applied" in stuck.json()["error"]
        assert b.metric("kubeforge_live_labels", **stable) == 10
    finally:
        hung.close()

    # One that refuses connections is gone, and what it remembered with it (as on any gateway restart): passed
    # over, its labels unknown, until the operator drops it from the table.
    with_peers(b, routes, [a.url, b.url])
    a.stop()
    gone = httpx.post(feedback, json=late)
    assert gone.status_code == 200 and gone.json() == {"joined": 1, "unknown": 1, "expired": 0}
    assert b.metric("kubeforge_live_labels", **stable) == 11
    wait_for_lines(logs["b"] / "clf.labels.jsonl", 11)
    assert len(pd.read_csv(f"{b.url}/v2/models/clf/feedback/dataset?since=1h&target=target")) == 11, "B's own rows"


def test_a_data_set_asked_of_one_replica_may_name_features_another_replica_has_seen(
    gateway, triton, registered, mlflow, tmp_path
):
    """A canary that took other features (g0..g3) answered at replica a alone and was then rolled back: only a's
    payload log knows its features' names. Asked at b, a data set of those features is a's canary rows, every other
    row left out and counted; a name no replica knows is refused naming what every replica's versions take."""
    routes = drift_table(mlflow.url, registered, triton.url)
    routes["models"]["clf"].update({"feedback": {"minLabels": 1}, "payloadLog": {"samplePercent": 100}})
    canary = next(v for v in routes["models"]["clf"]["versions"] if v["role"] == "canary")
    canary["featureOrder"] = ["g0", "g1", "g2", "g3"]
    logs = {name: tmp_path / f"payloads-{name}" for name in "ab"}
    a = gateway(routes, args=("--payload-log-dir", str(logs["a"])))
    b = gateway(routes, args=("--payload-log-dir", str(logs["b"])))
    for gw in (a, b):
        with_peers(gw, routes, [a.url, b.url])
    answered = {**answer_all(a.url, [f"a-{i}" for i in range(4)]), **answer_all(b.url, [f"b-{i}" for i in range(4)])}
    for i in range(3):
        pinned = f"{a.url}/v2/models/clf/versions/{registered.canary}/infer"
        assert httpx.post(pinned, content=identified(f"canary-{i}", 1.0 + i)).status_code == 200
        answered[f"canary-{i}"] = "pos"
    labels = [{"id": i, "label": int(label == "pos")} for i, label in answered.items()]  # the canary has no classes
    joined = httpx.post(f"{b.url}/v2/models/clf/feedback", json=labels)
    assert joined.json().get("joined") == 11, joined.text
    for name, count in (("a", 7), ("b", 4)):
        wait_for_lines(logs[name] / "clf.jsonl", count)
        wait_for_lines(logs[name] / "clf.labels.jsonl", count)
    rolled_back = {**routes, "models": {"clf": {**routes["models"]["clf"]}}}
    rolled_back["models"]["clf"]["versions"] = [v for v in routes["models"]["clf"]["versions"] if v is not canary]
    for gw in (a, b):
        with_peers(gw, rolled_back, [a.url, b.url])
    url = f"{b.url}/v2/models/clf/feedback/dataset?since=1h&target=target"

    found = httpx.get(f"{url}&features=g0,g2")

    assert found.status_code == 200, found.text
    frame = pd.read_csv(io.StringIO(found.text))
    assert list(frame.columns) == ["g0", "g2", "target", "event_timestamp"]
    assert sorted(frame["g0"]) == [1.0, 2.0, 3.0] and set(frame["target"]) == {1}
    assert found.headers["kubeforge-rows-left-out"] == "8", "the stable version's rows, at both replicas"
    refused = httpx.get(f"{url}&features=g0,h9")
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "features: 'h9' is not a feature of model 'clf'; its versions take f0, f1, f2, f3, g0, g1, g2, g3"
    )


def test_an_answer_labelled_twice_while_a_replica_waits_for_its_peers_joins_once(gateway, triton, registered, mlflow):
    """A replica sent a batch checks it, then waits for every peer's dry run before joining; a batch labelling the
    same answers that lands meanwhile (at this replica or at the one that gave the answer) takes them first. The
    waiting batch does not join them again: its caller is told they are unknown, and each answer is counted once.
    The wait is made real by stopping a third replica (SIGSTOP), as a stalled process is."""
    routes = drift_table(mlflow.url, registered, triton.url)
    routes["models"]["clf"]["feedback"] = {"window": "10m", "minLabels": 1}
    a, b, stalled = gateway(routes), gateway(routes), gateway(routes)
    with_peers(b, routes, [a.url, b.url, stalled.url])
    answer_all(a.url, ["at-a"])
    answer_all(b.url, ["at-b"])
    stable = {"version": registered.stable, "role": "stable"}
    first: list[httpx.Response] = []
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        waiting = threading.Thread(
            target=lambda: first.append(
                httpx.post(
                    f"{b.url}/v2/models/clf/feedback",
                    json=[{"id": "at-a", "label": "pos"}, {"id": "at-b", "label": "pos"}],
                    timeout=30,
                )
            )
        )
        waiting.start()
        time.sleep(1.0)  # b has checked the batch and a has accepted its part; b waits for the stalled replica
        for gw, request_id in ((b, "at-b"), (a, "at-a")):
            taken = httpx.post(f"{gw.url}/v2/models/clf/feedback", json=[{"id": request_id, "label": "neg"}])
            assert taken.json() == {"joined": 1, "unknown": 0, "expired": 0}
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    waiting.join(timeout=30)
    assert first[0].status_code == 200 and first[0].json() == {"joined": 0, "unknown": 2, "expired": 0}
    for gw in (a, b):  # each answer counted once, with the label that took it (wrong: accuracy 0)
        assert gw.metric("kubeforge_live_labels", **stable) == 1
        assert gw.metric("kubeforge_live_accuracy", **stable) == 0.0
    assert b.metric("kubeforge_feedback_labels_total", version="", role="", result="unknown") == 2


def with_peers(gw, routes: dict, peers: list[str]) -> None:
    """Give gw the route table naming peers, as the operator does, and wait until it has loaded it."""
    before = gw.metric("kubeforge_route_table_reloads_total", file="routes", result="ok")
    gw.write({**routes, "peers": peers})
    deadline = time.monotonic() + 10
    while gw.metric("kubeforge_route_table_reloads_total", file="routes", result="ok") == before:
        assert time.monotonic() < deadline, "the table with peers is loaded"
        time.sleep(0.1)

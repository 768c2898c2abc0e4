"""Delayed labels at the gateway: the bounded join store, checking a batch of labels, and live quality series."""

from __future__ import annotations

import json
import sys
import time
import tracemalloc

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.serving.feedback import (
    Answered,
    BadFeedback,
    Feedback,
    JoinStore,
    QualityCollector,
    check_names,
    dataset,
    decode,
    feature_list,
    parse,
)
from kubeforge.serving.metrics import REGISTRY
from kubeforge.serving.payloads import PayloadLogger
from kubeforge.serving.routes import Route, RouteTable, compile_table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(rows: list[list[float]]) -> tuple[bytes, None]:
    flat = [v for row in rows for v in row]
    tensor = {"name": "outputs", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": flat}
    return json.dumps({"model_name": "clf", "outputs": [tensor]}).encode(), None


def entry(clock: Clock, task: str = "classification", rows: list[list[float]] | None = None) -> Answered:
    return Answered("1", "stable", task, ("neg", "pos"), clock(), clock(), answer(rows or [[0.2, 0.8]]))


def test_the_store_holds_at_most_max_pending_answers_however_long_the_stream():
    clock = Clock()
    store = JoinStore("bounded", max_pending=1000, ttl_s=3600, clock=clock)
    tracemalloc.start()
    for i in range(20_000):
        clock.now += 0.001
        store.add(f"req-{i}", Answered("1", "stable", "classification", None, 0.0, clock(), None))
        if i == 4999:
            settled, _ = tracemalloc.get_traced_memory()
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(store.entries) == 1000
    assert store.find("req-19999")[0] == "joined"
    assert store.find("req-0") == ("unknown", None), "the oldest were forgotten to make room"
    assert grown - settled < 64 * 1024, "memory stops growing once the store is full"


def test_answers_older_than_the_ttl_expire_and_their_late_labels_say_so():
    clock = Clock()
    store = JoinStore("ttl", max_pending=100, ttl_s=60, clock=clock)
    store.add("old", entry(clock))
    clock.now += 30
    store.add("newer", entry(clock))
    clock.now += 31

    assert store.find("old") == ("expired", None), "past its ttl, even before anything removed it"
    store.expire(clock())
    assert "old" not in store.entries and store.find("old") == ("expired", None)
    assert store.find("newer")[0] == "joined"
    assert store.find("never-answered") == ("unknown", None)


def test_answers_are_decoded_to_class_indices_or_values_and_their_bytes_dropped():
    clock = Clock()
    classified = entry(clock, rows=[[0.9, 0.1], [0.3, 0.7]])
    regressed = entry(clock, task="regression", rows=[[1.5], [-2.0]])
    broken = Answered("1", "stable", "classification", None, 0.0, 0.0, (b"not json", None))

    decode([classified, regressed, broken])

    assert classified.prediction.tolist() == [0, 1] and classified.answer is None and classified.width == 2
    assert regressed.prediction.tolist() == [1.5, -2.0]
    assert broken.prediction is None and broken.error is not None


def routes(feedback: dict | None = None, task: str = "classification", classes: list[str] | None = None) -> list[Route]:
    drift = None
    if classes is not None:
        drift = {"features": ["f0", "f1"], "baseline": [], "task": task, "classes": classes}
    versions = [
        {"version": "1", "role": "stable", "url": "http://127.0.0.1:1", "weight": 90, "drift": drift},
        {"version": "2", "role": "canary", "url": "http://127.0.0.1:2", "weight": 10},
    ]
    spec = {"versions": versions, "task": task, "feedback": feedback or {"window": "1m", "minLabels": 4}}
    return list(compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values())


def answered(feedback: Feedback, route: Route, version: str, request_id: str, rows: list[list[float]]) -> None:
    feedback.record(route, route.versions[version], request_id, answer(rows))


def series(feedback: Feedback) -> dict[tuple[str, str, str], float]:
    registry = CollectorRegistry()
    registry.register(QualityCollector(lambda: feedback))
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["version"], s.labels["role"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def post(feedback: Feedback, route: Route, labels: object) -> dict[str, int]:
    """A batch of labels (or the bytes of one) posted to a gateway with no peers, as the gateway does it: checked
    whole, joined, misses counted; the counts by result."""
    payload = labels if isinstance(labels, bytes) else json.dumps(labels).encode()
    checked = feedback.check(route, parse(payload)[0])
    feedback.apply(route, checked)
    feedback.missed(route, checked)
    return checked.counts()


def test_joined_labels_give_accuracy_per_version_once_the_window_holds_min_labels():
    clock = Clock()
    feedback = Feedback(clock=clock, wall=clock)
    [route] = routes(classes=["neg", "pos"])
    feedback.load([route])
    for i in range(6):
        answered(feedback, route, "1", f"s{i}", [[0.1, 0.9]])  # predicts pos
    answered(feedback, route, "2", "c0", [[0.9, 0.1]])

    counts = post(feedback, route, {"labels": [{"id": f"s{i}", "label": "pos"} for i in range(3)]})
    assert counts == {"joined": 3, "unknown": 0, "expired": 0}
    assert ("kubeforge_live_accuracy", "1", "stable") not in series(feedback), "3 labels, below minLabels 4"
    assert series(feedback)[("kubeforge_live_labels", "1", "stable")] == 3

    counts = post(feedback, route, [{"id": "s3", "label": 0}, {"id": "s4", "label": "neg"}, {"id": "s0", "label": 1}])
    assert counts == {"joined": 2, "unknown": 1, "expired": 0}, "s0 was labelled already"
    assert series(feedback)[("kubeforge_live_accuracy", "1", "stable")] == pytest.approx(3 / 5)
    assert ("kubeforge_live_accuracy", "2", "canary") not in series(feedback)

    clock.now += 61
    assert series(feedback)[("kubeforge_live_labels", "1", "stable")] == 0, "the window slid past them"


def test_an_answer_labelled_by_two_batches_checked_at_once_joins_the_first_applied_only():
    """A replica checks a batch, then waits for its peers before applying it; a batch labelling the same answer
    that is applied meanwhile takes it, and the first batch's label for it is unknown, not counted twice."""
    clock = Clock()
    feedback = Feedback(clock=clock, wall=clock)
    [route] = routes(classes=["neg", "pos"])
    feedback.load([route])
    for request_id in ("r0", "r1"):
        answered(feedback, route, "1", request_id, [[0.1, 0.9]])

    waiting = feedback.check(route, [("r0", "pos"), ("r1", "neg")])
    assert waiting.results == ["joined", "joined"]
    assert post(feedback, route, [{"id": "r1", "label": "pos"}]) == {"joined": 1, "unknown": 0, "expired": 0}
    records = feedback.apply(route, waiting)
    assert waiting.counts() == {"joined": 1, "unknown": 1, "expired": 0}
    assert [r["requestId"] for r in records] == ["r0"], "only what joined goes to the labels file"
    assert series(feedback)[("kubeforge_live_labels", "1", "stable")] == 2, "r1 counted once, with its first label"


def test_a_version_without_class_labels_takes_class_indices():
    clock = Clock()
    feedback = Feedback(clock=clock, wall=clock)
    [route] = routes()
    feedback.load([route])
    answered(feedback, route, "2", "a", [[0.1, 0.9], [0.8, 0.2]])
    answered(feedback, route, "2", "b", [[0.1, 0.9]])

    with pytest.raises(BadFeedback, match=r"labels\[1\]\.label must be a class index 0\.\.1") as refused:
        post(feedback, route, [{"id": "a", "label": [1, 0]}, {"id": "b", "label": "pos"}])
    assert refused.value.status == 422
    assert post(feedback, route, [{"id": "a", "label": [1, 1]}]) == {"joined": 1, "unknown": 0, "expired": 0}
    assert post(feedback, route, [{"id": "b", "label": 1}])["joined"] == 1, "nothing of the refused batch applied"


def test_regression_labels_give_mae_and_rmse():
    clock = Clock()
    feedback = Feedback(clock=clock, wall=clock)
    [route] = routes({"window": "1m", "minLabels": 2}, task="regression")
    feedback.load([route])
    answered(feedback, route, "1", "a", [[1.0], [2.0]])
    answered(feedback, route, "1", "b", [[0.0]])

    with pytest.raises(BadFeedback, match=r"labels\[0\]\.label must be a number"):
        post(feedback, route, [{"id": "b", "label": "high"}])
    assert post(feedback, route, [{"id": "a", "label": [2.0, 2.0]}, {"id": "b", "label": -2}])["joined"] == 2

    shown = series(feedback)
    assert shown[("kubeforge_live_mae", "1", "stable")] == pytest.approx(1.0)
    assert shown[("kubeforge_live_rmse", "1", "stable")] == pytest.approx(np.sqrt(5 / 3))
    assert shown[("kubeforge_live_labels", "1", "stable")] == 3


@pytest.mark.parametrize(
    ("payload", "status", "names"),
    [
        (b"{not json", 400, "not JSON"),
        (b'{"labels": 3}', 400, "labels is missing or not a list"),
        (b'[{"label": 1}]', 400, "labels[0].id is missing"),
        (b'[{"id": "a", "label": 1}, {"id": 7, "label": 1}]', 400, "labels[1].id is not a string"),
        (b'[{"id": "a"}]', 400, "labels[0].label is missing"),
        (b'[{"id": "a", "label": {"secret-value": 1}}]', 400, "labels[0].label has the wrong type"),
        (json.dumps([{"id": "a", "label": 1}] * 10_001).encode(), 413, "send them in batches"),
    ],
)
def test_malformed_batches_are_refused_naming_the_field(payload, status, names):
    feedback = Feedback()
    [route] = routes()
    feedback.load([route])
    with pytest.raises(BadFeedback) as refused:
        post(feedback, route, payload)
    assert refused.value.status == status
    assert names in str(refused.value) and "secret-value" not in str(refused.value)


def test_unknown_class_labels_name_the_versions_classes_and_are_not_applied():
    feedback = Feedback()
    [route] = routes(classes=["neg", "pos"])
    feedback.load([route])
    answered(feedback, route, "1", "a", [[0.1, 0.9]])

    with pytest.raises(BadFeedback, match=r"labels\[0\]\.label is not a class of version 1.*neg, pos"):
        post(feedback, route, [{"id": "a", "label": "maybe"}])
    assert post(feedback, route, [{"id": "a", "label": "pos"}])["joined"] == 1


def test_a_reload_keeps_the_store_and_windows_of_versions_still_in_their_roles():
    clock = Clock()
    feedback = Feedback(clock=clock, wall=clock)
    [route] = routes(classes=["neg", "pos"])
    feedback.load([route])
    for i in range(5):
        answered(feedback, route, "1", f"s{i}", [[0.1, 0.9]])
    post(feedback, route, [{"id": "s0", "label": "pos"}])

    [reloaded] = routes(classes=["neg", "pos"])
    feedback.load([reloaded])

    assert post(feedback, reloaded, [{"id": f"s{i}", "label": "pos"} for i in range(1, 5)])["joined"] == 4
    assert series(feedback)[("kubeforge_live_labels", "1", "stable")] == 5


def test_the_dataset_joins_labels_to_payload_records_one_row_per_request_row(tmp_path):
    [route] = routes(classes=["neg", "pos"])
    inputs = {"a": [[1, 2]], "b": [[3, 4], [5, 6]], "c": [[7, 8]], "d": "[redacted]"}
    records = [
        {"requestId": rid, "time": f"2030-01-01T00:00:0{i}.000Z", "version": "1", "inputs": {"features": x}}
        for i, (rid, x) in enumerate(inputs.items())
    ]
    (tmp_path / "clf.jsonl.1").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    (tmp_path / "clf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[2:]))
    labels = [{"requestId": "a", "label": 1}, {"requestId": "b", "label": [0, 1]}, {"requestId": "d", "label": 0}]
    (tmp_path / "clf.labels.jsonl").write_text("".join(json.dumps(item) + "\n" for item in labels))
    now = 1_893_456_000 + 3600  # 2030-01-01T01:00Z

    text = dataset(tmp_path, route, 2 * 3600, "target", now).text

    assert text.splitlines() == [
        "f0,f1,target,event_timestamp",
        "1.0,2.0,1,2030-01-01T00:00:00.000Z",
        "3.0,4.0,0,2030-01-01T00:00:01.000Z",
        "5.0,6.0,1,2030-01-01T00:00:01.000Z",
    ]
    assert dataset(tmp_path, route, 1800, "target", now).text.splitlines() == ["f0,f1,target,event_timestamp"]
    with pytest.raises(BadFeedback, match="target is the name of one of the model's features"):
        dataset(tmp_path, route, 3600, "f0", now)


def test_rows_of_a_version_the_route_no_longer_has_keep_its_feature_names(tmp_path):
    """A canary rolled back or a stable version retired leaves the route, while its labelled records stay in the
    window a retrain reads: their columns are named as that version named its features (the payload log keeps the
    names), not feature_<i>, which would give the trainer each feature twice, half empty."""
    drift = {"features": ["f0", "f1"], "baseline": [], "task": "classification", "classes": ["neg", "pos"]}
    versions = [
        {"version": "1", "role": "stable", "url": "http://127.0.0.1:1", "weight": 90, "drift": drift},
        {"version": "2", "role": "canary", "url": "http://127.0.0.1:2", "weight": 10, "drift": drift},
    ]
    spec = {"versions": versions, "task": "classification", "payloadLog": {"samplePercent": 100}}
    [route] = compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values()
    logger = PayloadLogger(tmp_path)
    for version, request_id in (("2", "a"), ("1", "b")):
        request = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
        logger.offer(route, route.versions[version], request_id, time.perf_counter(), (request.encode(), None), None,
                     answer([[0.1, 0.9]]))  # fmt: skip
    logger._write([logger.queue.get_nowait() for _ in range(logger.queue.qsize())])
    logger.close()
    labels = [{"requestId": "a", "label": 1}, {"requestId": "b", "label": 0}]
    (tmp_path / "clf.labels.jsonl").write_text("".join(json.dumps(item) + "\n" for item in labels))

    spec["versions"] = versions[:1]  # version 2 rolled back: the route has version 1 alone
    [retired] = compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values()
    rows = dataset(tmp_path, retired, 3600, "target", time.time() + 1).text.splitlines()

    assert rows[0] == "f0,f1,target,event_timestamp"
    assert [row.split(",")[:3] for row in rows[1:]] == [["1.0", "2.0", "1"], ["1.0", "2.0", "0"]]


def test_a_data_set_has_the_features_a_retrain_trains_on_and_leaves_out_rows_of_versions_without_them(tmp_path):
    """The stable version takes f0, f1; a canary takes a third feature, and a shadow since retired took others.
    One CSV of all three would have columns half empty, which the trainer refuses whole: the data set takes the
    stable version's features (or those asked for) and the rows that have them."""

    def drift(*names: str) -> dict:
        return {"features": list(names), "baseline": [], "task": "classification", "classes": ["neg", "pos"]}

    versions = [
        {"version": "1", "role": "stable", "url": "http://127.0.0.1:1", "weight": 50, "drift": drift("f0", "f1")},
        {"version": "2", "role": "canary", "url": "http://127.0.0.1:2", "weight": 50, "drift": drift("f2", "f0", "f1")},
        {"version": "3", "role": "shadow", "url": "http://127.0.0.1:3", "weight": 0, "drift": drift("g0", "g1")},
    ]
    spec = {"versions": versions, "task": "classification", "payloadLog": {"samplePercent": 100}}
    [route] = compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values()
    logger = PayloadLogger(tmp_path)
    sent = {"a": ("1", [1, 2]), "b": ("2", [3, 4, 5]), "c": ("3", [6, 7]), "d": ("1", [8, 9])}
    for request_id, (version, row) in sent.items():
        tensor = {"name": "features", "datatype": "FP32", "shape": [1, len(row)], "data": row}
        logger.offer(route, route.versions[version], request_id, time.perf_counter(),
                     (json.dumps({"inputs": [tensor]}).encode(), None), None, answer([[0.1, 0.9]]))  # fmt: skip
    logger._write([logger.queue.get_nowait() for _ in range(logger.queue.qsize())])
    logger.close()
    labels = [{"requestId": request_id, "label": i % 2} for i, request_id in enumerate(sent)]
    (tmp_path / "clf.labels.jsonl").write_text("".join(json.dumps(item) + "\n" for item in labels))
    spec["versions"] = versions[:2]  # version 3 retired; its rows stay in the window
    [route] = compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values()
    now = time.time() + 1

    stable = dataset(tmp_path, route, 3600, "label", now)
    rows = [row.split(",")[:-1] for row in stable.text.splitlines()]
    assert rows == [["f0", "f1", "label"], ["1.0", "2.0", "0"], ["4.0", "5.0", "1"], ["8.0", "9.0", "1"]]
    assert stable.left_out == 1, "the shadow's row"
    asked = dataset(tmp_path, route, 3600, "label", now, ["f2", "f0"])
    assert [row.split(",")[:-1] for row in asked.text.splitlines()] == [["f2", "f0", "label"], ["3.0", "4.0", "1"]]
    assert asked.left_out == 3, "only the canary's row has f2"
    with pytest.raises(BadFeedback, match="target is the name of one of the model's features"):
        dataset(tmp_path, route, 3600, "f2", now, ["f2"])
    with pytest.raises(BadFeedback, match=r"features: 'f3' is not a feature of model 'clf'; its versions take f0, f1"):
        dataset(tmp_path, route, 3600, "label", now, ["f0", "f3"])
    # A replica with peers leaves the check to the one asked, which knows what all of them know.
    unchecked = dataset(tmp_path, route, 3600, "label", now, ["f0", "f3"], check=False)
    assert unchecked.left_out == 4 and unchecked.known == {"f0", "f1", "f2", "g0", "g1"}
    check_names("clf", "label", ["f0", "f3"], unchecked.known | {"f3"})  # f3: known to another replica
    assert feature_list(" f2, f0") == ["f2", "f0"] and feature_list(None) is None
    for bad in ("", "f0,,f1", "f0,f0"):
        with pytest.raises(BadFeedback, match="features must name feature columns once each"):
            feature_list(bad)


def test_every_answer_is_remembered_while_the_entry_stays_small():
    clock = Clock()
    one = Answered("1", "stable", "classification", ("neg", "pos"), clock(), clock(), None)
    one.prediction = np.array([1])
    assert sys.getsizeof(one) + one.prediction.nbytes < 200


def test_the_gateway_registry_serves_the_feedback_counters():
    names = {m.name for m in REGISTRY.collect()}
    assert {"kubeforge_feedback_labels", "kubeforge_feedback_evicted"} <= names


def test_data_sets_of_several_gateway_replicas_merge_into_one_oldest_first() -> None:
    from kubeforge.serving.feedback import DataSet, merge_datasets

    first = DataSet("f0,f1,label,event_timestamp\n1.0,2.0,pos,2026-01-01T00:00:02.000Z\n", 2, frozenset({"f0", "f1"}))
    second = DataSet(
        "f0,f1,feature_2,label,event_timestamp\n3.0,4.0,5.0,neg,2026-01-01T00:00:01.000Z\n", 1, frozenset({"g0"})
    )
    merged = merge_datasets([first, second])
    assert merged.left_out == 3 and merged.known == {"f0", "f1", "g0"}
    assert merged.text.splitlines() == [
        "f0,f1,feature_2,label,event_timestamp",
        "3.0,4.0,5.0,neg,2026-01-01T00:00:01.000Z",
        "1.0,2.0,,pos,2026-01-01T00:00:02.000Z",
    ]
    empty = DataSet("f0,f1,label,event_timestamp\n", 0, frozenset({"f0", "f1"}))
    assert merge_datasets([first, empty]) == first, "a replica without rows adds none"

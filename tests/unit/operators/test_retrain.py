"""spec.retrain's decision: when a trigger fires, which TrainingJob it creates, and when nothing may start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeforge.api.meta import SecretKeyRef
from kubeforge.api.retrain import Retrain
from kubeforge.operators.deployment import retrain as rt

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
CREATED = NOW - timedelta(days=2)
DRIFTED = rt.Observation(psi=0.8, psi_feature="mean_radius", accuracy=0.95)
CALM = rt.Observation(psi=0.05, psi_feature="mean_radius", accuracy=0.95)


def policy(**triggers: Any) -> Retrain:
    return Retrain.model_validate(
        {
            "trainingJob": {"name": "cancer-v2"},
            "triggers": triggers or {"drift": {"psi": 0.2, "for": "1m"}},
            "cooldown": "1h",
        }
    )


def job(name: str, created: datetime, phase: str | None, trigger: str = "drift") -> rt.RetrainJob:
    return rt.RetrainJob(name, trigger, 0.8, created, phase, "Job failed: exit code 1", "4" if phase else None)


def test_drift_retrains_once_it_has_held_for_its_duration_under_a_name_fixed_by_the_window() -> None:
    first = rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, {}, [])
    assert first.create is None and first.condition[1] == rt.HOLDING
    assert first.holding == {"drift": NOW}
    later = NOW + timedelta(seconds=61)
    fired = rt.decide("cancer", policy(), later, CREATED, DRIFTED, first.holding, [])
    assert fired.create is not None
    assert fired.create == ("cancer-retrain-20261203120000", "drift", 0.8)
    assert fired.condition[:2] == ("True", rt.STARTED) and "PSI of mean_radius 0.8 > 0.2 for 1m" in fired.condition[2]
    assert [e[1] for e in fired.events] == [rt.STARTED]
    # Decided again in the same cooldown window (a restarted operator, a second replica): the same name.
    again = rt.decide("cancer", policy(), later + timedelta(minutes=20), CREATED, DRIFTED, first.holding, [])
    assert again.create == fired.create


def test_a_trigger_that_stops_holding_starts_over() -> None:
    held = rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, {}, [])
    calm = rt.decide("cancer", policy(), NOW + timedelta(seconds=30), CREATED, CALM, held.holding, [])
    assert calm.holding == {} and calm.condition[1] == rt.WATCHING
    assert "drift: PSI > 0.2 for 1m" in calm.condition[2]
    unknown = rt.decide("cancer", policy(), NOW, CREATED, rt.Observation(), {}, [])
    assert unknown.holding == {}, "no drift reported (too few samples) is not drift"


def test_one_retrain_at_a_time_then_the_cooldown() -> None:
    holding = {"drift": NOW - timedelta(hours=2)}
    running = rt.decide(
        "cancer", policy(), NOW, CREATED, DRIFTED, holding, [job("r1", NOW - timedelta(minutes=5), "Running")]
    )
    assert running.create is None and running.condition[:2] == ("True", rt.RUNNING)
    done = [job("r1", NOW - timedelta(minutes=5), "Succeeded")]
    cooling = rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, holding, done)
    assert cooling.create is None and cooling.condition[1] == rt.COOLING_DOWN
    assert "2026-12-03T12:55:30Z" in cooling.condition[2]
    after = rt.decide("cancer", policy(), NOW + timedelta(hours=1), CREATED, DRIFTED, holding, done)
    assert after.create is not None and after.create[0] == "cancer-retrain-20261203130000"
    quiet = rt.decide("cancer", policy(), NOW, CREATED, CALM, {}, done)
    assert quiet.condition[1] == rt.SUCCEEDED and "registered version 4" in quiet.condition[2]


def test_a_failed_retrain_stops_retraining_until_its_trainingjob_is_deleted() -> None:
    failed = [job("cancer-retrain-1", NOW - timedelta(hours=3), "Failed")]
    holding = {"drift": NOW - timedelta(hours=2)}
    d = rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, holding, failed)
    assert d.create is None and d.failed
    assert "kubectl delete trainingjob cancer-retrain-1" in d.condition[2] and "exit code 1" in d.condition[2]
    assert rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, holding, []).create is not None
    # Deleted, it no longer stops retraining; the cooldown since it started (from status) still counts.
    since = NOW - timedelta(minutes=10)
    assert rt.decide("cancer", policy(), NOW, CREATED, DRIFTED, holding, [], since).condition[1] == rt.COOLING_DOWN


def test_accuracy_below_its_bound_retrains() -> None:
    p = policy(accuracy={"below": 0.9, "for": "30s"})
    low = rt.Observation(accuracy=0.7)
    held = rt.decide("cancer", p, NOW, CREATED, low, {}, [])
    fired = rt.decide("cancer", p, NOW + timedelta(seconds=30), CREATED, low, held.holding, [])
    assert fired.create is not None and fired.create[1:3] == ("accuracy", 0.7)
    assert "live accuracy 0.7 < 0.9 for 30s" in fired.condition[2]


def test_a_schedule_retrains_at_each_time_after_the_deployment_existed_once() -> None:
    p = policy(schedule="0 12 * * *")
    fired = rt.decide("cancer", p, NOW, CREATED, CALM, {}, [])
    assert fired.create is not None and fired.create[:2] == ("cancer-retrain-20261203120000", "schedule")
    made = [job(fired.create[0], NOW, "Succeeded", "schedule")]
    assert rt.decide("cancer", p, NOW + timedelta(hours=2), CREATED, CALM, {}, made).create is None
    just_created = NOW - timedelta(seconds=10)
    assert rt.decide("cancer", p, NOW, just_created, CALM, {}, []).create is None, "due before it existed"


def test_the_trainingjob_copies_the_template_reads_recent_labels_and_goes_with_the_deployment() -> None:
    owner = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "cancer", "namespace": "ml", "uid": "u-1"},
    }
    p = Retrain.model_validate(
        {"trainingJob": {"name": "cancer-v2"}, "triggers": {"drift": {}}, "dataset": {"fromFeedback": {"since": "6h"}}}
    )
    template = {"model": {"name": "breast-cancer"}, "dataset": {"uri": "/data/old.csv", "target": "target"}}
    tj = rt.training_job(owner, p, template, ("cancer-retrain-1", "drift", 0.81), "http://127.0.0.1:9000")
    assert tj["spec"]["dataset"] == {
        "target": "target",
        "uri": "http://127.0.0.1:9000/v2/models/cancer/feedback/dataset?since=6h&target=target",
        "format": "csv",
    }
    assert template["dataset"]["uri"] == "/data/old.csv", "the template is not changed"
    # Behind the gateway's tokens: the retrain's own token, not the one the template read its data with.
    p.dataset.from_feedback.token_secret_ref = SecretKeyRef(name="retrain-token", key="t")  # type: ignore[union-attr]
    template["dataset"]["tokenSecretRef"] = {"name": "old-data", "key": "token"}
    tj = rt.training_job(owner, p, template, ("cancer-retrain-1", "drift", 0.81), "http://127.0.0.1:9000")
    assert tj["spec"]["dataset"]["tokenSecretRef"] == {"name": "retrain-token", "key": "t"}
    # A template that trains on some features asks the gateway for those columns (and rows that have them).
    template["dataset"]["features"] = ["radius", "texture"]
    tj = rt.training_job(owner, p, template, ("cancer-retrain-1", "drift", 0.81), "http://127.0.0.1:9000")
    assert tj["spec"]["dataset"]["uri"].endswith("?since=6h&target=target&features=radius%2Ctexture")
    meta = tj["metadata"]
    assert meta["labels"][rt.RETRAIN_OF] == "cancer" and meta["labels"][rt.TRIGGER] == "drift"
    assert meta["annotations"][rt.VALUE] == "0.81" and meta["ownerReferences"][0]["uid"] == "u-1"


@pytest.mark.parametrize("name", ["cancer", "a" * 63])
def test_names_leave_room_for_the_trainers_job(name: str) -> None:
    made = rt.retrain_name(name, NOW)
    assert len(made + "-a99") <= 63 and made.endswith("-retrain-20261203120030")
    assert rt.retrain_name(name, NOW) == made


def test_the_triggers_read_the_stable_versions_gauges_from_the_gateway() -> None:
    text = (
        "# TYPE kubeforge_drift_psi gauge\n"
        'kubeforge_drift_psi{model="cancer",version="2",role="stable",feature="mean_radius"} 0.9\n'
        'kubeforge_drift_psi{model="cancer",version="2",role="stable",feature="mean_area"} 0.3\n'
        'kubeforge_drift_psi{model="cancer",version="3",role="canary",feature="mean_area"} 5\n'
        "# TYPE kubeforge_live_accuracy gauge\n"
        'kubeforge_live_accuracy{model="cancer",version="2",role="stable"} 0.71\n'
    )
    assert rt.observe(text, "cancer", "2") == rt.Observation(0.9, "mean_radius", 0.71)
    assert rt.observe(text, "cancer", None) == rt.Observation()

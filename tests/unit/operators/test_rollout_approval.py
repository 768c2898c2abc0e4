"""spec.policy.requireApproval and status.history in the rollout state machine, with a fake clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kubeforge.api.modeldeployment import HISTORY_LIMIT
from kubeforge.core.approval import Approval
from kubeforge.operators.deployment.rollout import Resolved
from tests.unit.operators.test_rollout_plan import CANARY, FAIL, PASS, T0, cond, md, run, weights

POLICY = {"policy": {"requireApproval": True}}
YES = Approval("approved", "alice", "2026-01-01T00:00:00Z", "offline eval ok")
NO = Approval("rejected", "bob", "2026-01-01T00:00:00Z", "drops recall")


def resolved(stable: str = "1", canary: str | None = None, **approvals: Approval) -> Resolved:
    """Resolved versions of model clf; approvals by version, e.g. v2=YES."""
    return Resolved(stable=stable, canary=canary, approvals={("clf", k[1:]): a for k, a in approvals.items()})


def history(body: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(h["action"], h.get("version"), h["reason"]) for h in body["status"].get("history", [])]


def test_an_unapproved_first_version_is_not_served_and_the_condition_names_the_command() -> None:
    b = md(**POLICY)
    p = run(b, resolved())
    assert p.apply == [] and "stableVersion" not in b["status"]
    ready = cond(b, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AwaitingApproval")
    assert (
        'version 1 of clf awaits approval before it becomes stable: run `kubeforge model approve clf 1 --note "..."`'
        in (ready["message"])
    )
    assert cond(b, "Approved")["reason"] == "AwaitingApproval"
    assert [e[1] for e in p.events] == ["AwaitingApproval"]
    assert history(b) == [("AwaitApproval", "1", "AwaitingApproval")]
    assert run(b, resolved()).events == [], "waiting on is no new decision"
    p = run(b, resolved(v1=YES), now=T0 + timedelta(seconds=10))
    assert b["status"]["stableVersion"] == "1" and cond(b, "Ready")["status"] == "True"
    assert cond(b, "Approved")["status"] == "True"
    selected = next(e for e in p.events if e[1] == "StableSelected")
    assert 'approved by alice at 2026-01-01T00:00:00Z: "offline eval ok"' in selected[2]
    assert history(b)[-1] == ("Select", "1", "StableSelected")


def test_an_unapproved_canary_gets_no_traffic_until_approved_then_rolls_out() -> None:
    b = md(canary=CANARY, **POLICY)
    run(b, resolved(v1=YES))
    p = run(b, resolved("1", "2", v1=YES))
    assert "canaryVersion" not in b["status"] and weights(p) == {"1": 100}
    assert set(p.live_versions) == {"1"}, "no Triton for a version that waits"
    approved = cond(b, "Approved")
    assert (approved["status"], approved["reason"]) == ("False", "AwaitingApproval")
    assert "version 2 of clf awaits approval before it becomes canary" in approved["message"]
    assert "kubeforge model approve clf 2" in approved["message"] and "version 1 keeps serving" in approved["message"]
    assert cond(b, "Progressing")["reason"] == "AwaitingApproval"
    assert [e[:2] for e in p.events] == [("Normal", "AwaitingApproval")]
    before = dict(b["status"])
    p = run(b, resolved("1", "2", v1=YES), now=T0 + timedelta(seconds=10))
    assert p.events == [] and b["status"] == before, "a resync changes nothing"

    p = run(b, resolved("1", "2", v1=YES, v2=YES), now=T0 + timedelta(seconds=20))
    assert b["status"]["canaryVersion"] == "2" and weights(p) == {"1": 80, "2": 20}
    assert cond(b, "Approved")["status"] == "True"
    started = cond(b, "Promoted")["message"]
    assert "rolling out version 2" in started and "approved by alice" in started
    assert history(b)[-3:] == [
        ("AwaitApproval", "2", "AwaitingApproval"),
        ("Start", "2", "CanaryStarted"),
        ("Step", "2", "StepAdvanced"),
    ]


def test_a_rejected_canary_is_never_rolled_out_and_the_condition_says_who_and_why() -> None:
    b = md(canary=CANARY, **POLICY)
    run(b, resolved(v1=YES))
    p = run(b, resolved("1", "2", v1=YES, v2=NO))
    assert "canaryVersion" not in b["status"] and weights(p) == {"1": 100}
    approved = cond(b, "Approved")
    assert approved["reason"] == "Rejected"
    assert 'version 2 of clf was rejected by bob at 2026-01-01T00:00:00Z: "drops recall"' in approved["message"]
    assert [e[:2] for e in p.events] == [("Warning", "Rejected")]
    assert history(b)[-1] == ("Refuse", "2", "Rejected")
    for t in (10, 20):
        p = run(b, resolved("1", "2", v1=YES, v2=NO), now=T0 + timedelta(seconds=t))
        assert p.events == [] and "canaryVersion" not in b["status"]
    assert cond(b, "Ready")["status"] == "True", "the stable version keeps serving"


def test_a_canary_rejected_mid_rollout_is_withdrawn_once() -> None:
    b = md(canary=CANARY, **POLICY)
    run(b, resolved("1", "2", v1=YES, v2=YES))
    assert b["status"]["canaryWeight"] == 20
    p = run(b, resolved("1", "2", v1=YES, v2=NO), now=T0 + timedelta(seconds=3))
    assert "canaryVersion" not in b["status"] and weights(p) == {"1": 100}
    assert [e[:2] for e in p.events] == [("Warning", "Rejected")]
    assert "canary 2 withdrawn, version 1 serves all traffic: version 2 of clf was rejected by bob" in p.events[0][2]
    assert history(b)[-1] == ("Withdraw", "2", "Rejected")
    assert run(b, resolved("1", "2", v1=YES, v2=NO), now=T0 + timedelta(seconds=6)).events == []


def test_a_pinned_version_replaces_the_stable_one_only_once_approved() -> None:
    b = md(**POLICY)
    b["spec"]["model"] = {"name": "clf", "version": 1}
    run(b, resolved(v1=YES))
    b["spec"]["model"]["version"] = 2
    p = run(b, resolved("2", v1=YES))
    assert b["status"]["stableVersion"] == "1" and weights(p) == {"1": 100}
    assert "version 2 of clf awaits approval before it becomes stable" in cond(b, "Approved")["message"]
    p = run(b, resolved("2", v2=YES), now=T0 + timedelta(seconds=10))
    assert b["status"]["stableVersion"] == "2"
    assert history(b)[-1] == ("Replace", "2", "StableReplaced")


def test_an_unapproved_shadow_gets_no_mirror() -> None:
    shadow = {"model": {"name": "clf", "alias": "challenger"}, "percent": 50}
    b = md(shadow=shadow, **POLICY)
    p = run(b, Resolved(stable="1", shadow="3", approvals={("clf", "1"): YES}))
    assert "shadowVersion" not in b["status"] and set(p.live_versions) == {"1"}
    assert "version 3 of clf awaits approval before it becomes shadow" in cond(b, "Approved")["message"]
    run(b, Resolved(stable="1", shadow="3", approvals={("clf", "1"): YES, ("clf", "3"): YES}))
    assert b["status"]["shadowVersion"] == "3"
    assert history(b)[-1] == ("Shadow", "3", "ShadowStarted")


def test_without_the_policy_nothing_waits_and_there_is_no_approved_condition() -> None:
    b = md(canary=CANARY)
    run(b, resolved("1", "2", v2=NO))
    assert b["status"]["canaryVersion"] == "2", "approval tags mean nothing without spec.policy.requireApproval"
    assert all(c["type"] != "Approved" for c in b["status"]["conditions"])


def test_history_records_each_decision_once_and_keeps_the_newest() -> None:
    b = md(canary=CANARY)
    r = resolved("1", "2")
    run(b, r)
    run(b, r, results=PASS, now=T0 + timedelta(seconds=11))
    run(b, r, results=PASS, now=T0 + timedelta(seconds=22))
    assert history(b) == [
        ("Select", "1", "StableSelected"),
        ("Start", "2", "CanaryStarted"),
        ("Step", "2", "StepAdvanced"),
        ("Step", "2", "StepAdvanced"),
        ("Promote", "2", "CanaryPromoted"),
    ]
    assert b["status"]["history"][0]["time"] == "2026-01-01T00:00:00Z"
    # Rollouts of versions 3, 4, ... each rolled back: the history keeps the newest HISTORY_LIMIT decisions.
    now = T0 + timedelta(seconds=30)
    for version in range(3, 15):
        r = resolved("2", str(version))
        for _ in range(3):
            now += timedelta(seconds=5)
            run(b, r, results=FAIL, now=now)
    entries = b["status"]["history"]
    assert len(entries) == HISTORY_LIMIT
    assert entries[-1]["action"] == "Rollback" and entries[-1]["reason"] == "AnalysisFailed"
    assert entries[-1]["version"] == "14" and "error-rate = 0.42" in entries[-1]["message"]

"""Picking why pods fail out of Pod status, as the kubelet reports it."""

from __future__ import annotations

from typing import Any

from kubeforge.core import podfailure

# The tail of a Triton log whose model does not load (FallbackToLogsOnError keeps it as termination message).
TRITON_TAIL = """\
I0101 10:00:00.100000 1 model_lifecycle.cc:469] loading: cancer:1
E0101 10:00:00.200000 1 model_lifecycle.cc:638] failed to load 'cancer' version 1: Not found: model 'cancer' not found
I0101 10:00:00.200100 1 model_lifecycle.cc:773] failed to load 'cancer'
+--------+---------+--------------------------------------------------------+
| Model  | Version | Status                                                 |
+--------+---------+--------------------------------------------------------+
| cancer | 1       | UNAVAILABLE: Not found: model 'cancer' not found       |
+--------+---------+--------------------------------------------------------+

I0101 10:00:00.300000 1 server.cc:305] Waiting for in-flight requests to complete.
I0101 10:00:00.300100 1 server.cc:321] Timeout 30: Found 0 model versions that have in-flight inferences
I0101 10:00:00.300200 1 server.cc:336] All models are stopped, unloading models
I0101 10:00:00.300300 1 server.cc:343] Timeout 30: Found 0 live models and 0 in-flight non-inference requests
error: creating server: Internal - failed to load all models
"""

PYTHON_TAIL = """\
2026-01-01 10:00:00,123 INFO kubeforge.serving.export: exporting version 1
Traceback (most recent call last):
  File "/app/export.py", line 10, in <module>
    main()
  File "/app/export.py", line 7, in main
    raise KeyError("feature 'age' is missing from the signature")
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
KeyError: "feature 'age' is missing from the signature"

"""


def pod(name: str, *containers: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Running", "containerStatuses": list(containers), **status}}


def crash_looping(name: str, message: str, exit_code: int = 1, finished: str = "2026-01-01T10:00:01Z") -> dict:
    return {
        "name": name,
        "ready": False,
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off 40s restarting failed {name}"}},
        "lastState": {
            "terminated": {"exitCode": exit_code, "reason": "Error", "message": message, "finishedAt": finished}
        },
    }


def running(name: str, ready: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "ready": ready,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2026-01-01T09:00:00Z"}},
    }


def test_a_crash_looping_triton_reports_the_line_that_says_why_not_the_shutdown_chatter() -> None:
    failure = podfailure.pick([pod("cancer-v1-abc", crash_looping("triton", TRITON_TAIL))])
    assert failure == {
        "reason": "CrashLoopBackOff",
        "container": "triton",
        "pod": "cancer-v1-abc",
        "exitCode": 1,
        "message": "failed to load 'cancer' version 1: Not found: model 'cancer' not found",
        "time": "2026-01-01T10:00:01Z",
    }
    assert podfailure.describe(failure) == (
        "container triton CrashLoopBackOff, exit code 1: "
        "failed to load 'cancer' version 1: Not found: model 'cancer' not found"
    )


def test_a_python_traceback_reports_its_exception_line() -> None:
    assert podfailure.meaningful_line(PYTHON_TAIL) == "KeyError: \"feature 'age' is missing from the signature\""


def test_a_log_without_error_markers_reports_its_last_line_and_quotes_and_timestamps_go() -> None:
    assert podfailure.meaningful_line("starting\nspec.dataset.uri: /data/x.csv is empty\n\n") == (
        "spec.dataset.uri: /data/x.csv is empty"
    )
    assert podfailure.meaningful_line('E0101 10:00:00.000001 7 server.cc:1] "model x: bad config"') == (
        "model x: bad config"
    )
    assert podfailure.meaningful_line("2026-01-01T10:00:00Z ERROR disk full\n2026-01-01T10:00:01Z bye") == (
        "ERROR disk full"
    )
    assert podfailure.meaningful_line("") == podfailure.meaningful_line(None) == ""


def test_a_trainer_that_exited_with_code_1_reports_exit_code_and_termination_message() -> None:
    trainer = {
        "name": "trainer",
        "ready": False,
        "state": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "message": "spec.dataset.target: column 'species' not found in /data/iris.csv",
                "finishedAt": "2026-01-01T10:05:00Z",
            }
        },
    }
    failure = podfailure.pick([pod("iris-a1-xyz", trainer, phase="Failed")])
    assert failure is not None
    assert (failure["reason"], failure["exitCode"], failure["container"]) == ("Error", 1, "trainer")
    assert failure["message"] == "spec.dataset.target: column 'species' not found in /data/iris.csv"


def test_oom_killed_names_the_field_that_sets_the_limit() -> None:
    oom = {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "epoch 3"}}}
    failure = podfailure.pick([pod("p", oom)], {"trainer": "spec.resources.memory"})
    assert failure is not None
    assert podfailure.describe(failure) == (
        "container trainer OOMKilled, exit code 137: killed at its memory limit; raise spec.resources.memory"
    )
    unnamed = podfailure.pick([pod("p", oom)])
    assert unnamed is not None and unnamed["message"] == "killed at its memory limit; raise the container memory limit"


def test_a_crash_loop_of_oom_kills_says_out_of_memory_between_crashes_too() -> None:
    """The kubelet reports a crash-looping container as waiting, its OOM kill only in lastState."""
    fields = {"triton": "spec.runtime.memory"}
    looping = crash_looping("triton", TRITON_TAIL)
    looping["lastState"]["terminated"].update(exitCode=137, reason="OOMKilled")
    waiting = podfailure.pick([pod("v1-abc", looping)], fields)
    running_again = {**looping, "state": {"running": {}}, "ready": False}
    restarted = podfailure.pick([pod("v1-abc", running_again)], fields)
    assert waiting is not None and restarted is not None
    assert waiting["message"] == restarted["message"] == "killed at its memory limit; raise spec.runtime.memory"
    assert podfailure.newer(waiting, restarted, "2026-01-01T00:00:00Z") is None, "the same failure, not news"


def test_an_image_that_cannot_be_pulled_reports_the_kubelets_message_and_no_exit_code() -> None:
    waiting = {
        "name": "trainer",
        "ready": False,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}},
    }
    failure = podfailure.pick([pod("p", waiting, phase="Pending")])
    assert failure == {
        "reason": "ImagePullBackOff",
        "container": "trainer",
        "pod": "p",
        "message": 'Back-off pulling image "nope:1"',
    }


def test_a_failing_init_container_is_the_failure_not_the_containers_waiting_behind_it() -> None:
    export = crash_looping("export", PYTHON_TAIL)
    behind = {"name": "triton", "ready": False, "state": {"waiting": {"reason": "PodInitializing"}}}
    failure = podfailure.pick([pod("v1-abc", behind, initContainerStatuses=[export], phase="Pending")])
    assert failure is not None and failure["container"] == "export"


def test_healthy_starting_and_deleted_pods_report_nothing() -> None:
    creating = {"name": "triton", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
    done = {"name": "init", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    recovered = {**running("triton"), "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    stopping = pod("old", crash_looping("triton", TRITON_TAIL))
    stopping["metadata"]["deletionTimestamp"] = "2026-01-01T10:00:00Z"
    pods = [
        pod("a", running("triton")),
        pod("b", creating, initContainerStatuses=[done]),
        pod("c", recovered),
        stopping,
    ]
    assert podfailure.pick(pods) is None
    assert podfailure.pick([]) is None


def test_a_container_restarted_after_a_crash_and_not_ready_reports_that_crash() -> None:
    restarted = {
        **running("gateway", ready=False),
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "error: --routes: no such file"}},
    }
    failure = podfailure.pick([pod("gw", restarted)])
    assert failure is not None and (failure["reason"], failure["exitCode"]) == ("Error", 2)
    assert failure["message"] == "error: --routes: no such file"


def test_pods_the_scheduler_or_the_node_gave_up_on() -> None:
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        "lastTransitionTime": "2026-01-01T10:00:00Z",
    }
    pending = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [unschedulable]}}
    failure = podfailure.pick([pending])
    assert failure is not None and "container" not in failure
    assert podfailure.describe(failure) == "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    evicted = pod("e", phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
    evicted["status"]["containerStatuses"] = [
        {"name": "t", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}
    ]
    assert podfailure.pick([pending, evicted])["reason"] == "Evicted"


def test_a_container_that_cannot_run_outranks_an_earlier_crash_and_the_latest_wins_among_equals() -> None:
    restarted = {
        **running("triton", ready=False),
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:00:00Z"}},
    }
    older = crash_looping("triton", "E0101 10:00:00.000000 1 x.cc:1] old", finished="2026-01-01T10:00:00Z")
    newer = crash_looping("triton", "E0101 10:00:00.000000 1 x.cc:1] new", finished="2026-01-01T10:30:00Z")
    assert podfailure.pick([pod("a", restarted), pod("b", older), pod("c", newer)])["message"] == "new"


def test_the_same_failure_is_not_news_whatever_its_reason_or_time_say_while_it_restarts() -> None:
    first = podfailure.pick([pod("p", crash_looping("triton", TRITON_TAIL))])
    recorded = podfailure.newer(None, first, "2026-01-01T10:00:05Z")
    assert recorded == first, "a failure with a time of its own keeps it"
    between_crashes = podfailure.pick(
        [
            pod(
                "p",
                {
                    **running("triton", ready=False),
                    "lastState": crash_looping("triton", TRITON_TAIL, finished="2026-01-01T10:01:00Z")["lastState"],
                },
            )
        ]
    )
    assert between_crashes["reason"] == "Error"
    assert podfailure.newer(recorded, between_crashes, "2026-01-01T10:01:05Z") is None
    assert podfailure.newer(recorded, None, "2026-01-01T10:02:00Z") is None, "kept after recovery"
    other = podfailure.pick([pod("q", crash_looping("triton", "E0101 10:00:00.000000 1 x.cc:1] another"))])
    assert podfailure.newer(recorded, other, "2026-01-01T10:03:00Z") == other
    no_time = {"reason": "ImagePullBackOff", "container": "t", "pod": "p", "message": "m"}
    assert podfailure.newer(None, no_time, "2026-01-01T10:04:00Z") == {**no_time, "time": "2026-01-01T10:04:00Z"}
    assert podfailure.event(no_time) == ("Warning", "ImagePullBackOff", "pod p: container t ImagePullBackOff: m")

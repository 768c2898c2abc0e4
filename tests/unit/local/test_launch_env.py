"""What a local container's process sees in its environment: its own env and what a node gives every container,
not the shell that started the local platform."""

from __future__ import annotations

import os
from pathlib import Path

from kubeforge.local.runner.executables import Executables, node_env
from kubeforge.local.runner.launch import build
from kubeforge.local.runner.state import PodState


def test_a_local_container_gets_its_own_env_and_the_nodes_not_the_callers_shell(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "someone-elses")  # the trainer would log there
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-pods")
    monkeypatch.setenv("KUBECONFIG", "/home/me/.kube/prod")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    pod = PodState("ml", "trainer-0", "uid", "hash", {}, str(tmp_path))
    container = {
        "name": "trainer",
        "command": ["kubeforge", "train"],
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}],
    }
    env = build(pod, container, snapshot=None, executables=Executables()).env  # type: ignore[arg-type]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env.get("PATH") == os.environ.get("PATH") and env.get("HOME") == os.environ.get("HOME")
    assert env["LC_ALL"] == "C.UTF-8" and env["OMP_NUM_THREADS"] == "2", "locale and threads, as an image sets"
    for shell_only in ("MLFLOW_EXPERIMENT_NAME", "AWS_SECRET_ACCESS_KEY", "KUBECONFIG"):
        assert shell_only not in env


def test_node_env_keeps_what_a_node_gives_every_container() -> None:
    shell = {"PATH": "/bin", "HOME": "/h", "XDG_CACHE_HOME": "/c", "CUDA_VISIBLE_DEVICES": "0", "GITHUB_TOKEN": "x"}
    assert node_env(shell) == {"PATH": "/bin", "HOME": "/h", "XDG_CACHE_HOME": "/c", "CUDA_VISIBLE_DEVICES": "0"}

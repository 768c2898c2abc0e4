"""Kubeconfigs the operators' API connection cannot use are refused with what to do instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeforge.core.kubeapi import CredentialsError, KubeApi


def write(path: Path, user: dict, current: str | None = "ctx") -> Path:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
    }
    if current:
        config["current-context"] = current
    path.write_text(json.dumps(config))
    return path


def test_an_exec_plugin_is_refused_naming_the_user_and_what_works(tmp_path: Path) -> None:
    config = write(tmp_path / "config", {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}})
    with pytest.raises(CredentialsError, match=r"user 'u' uses an exec or auth-provider plugin.*token or a client"):
        KubeApi.from_kubeconfig(config)


def test_no_current_context_and_an_undefined_one_are_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no current-context: kubectl config use-context"):
        KubeApi.from_kubeconfig(write(tmp_path / "a", {"token": "t"}, current=None))
    with pytest.raises(CredentialsError, match="context 'other' is not defined"):
        KubeApi.from_kubeconfig(write(tmp_path / "b", {"token": "t"}, current="other"))


def test_files_joined_with_a_colon_merge_and_the_first_current_context_wins(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_text(json.dumps({"current-context": "ctx"}))
    second = write(tmp_path / "second", {"token": "t"}, current="elsewhere")
    api = KubeApi.from_kubeconfig(f"{first}:{tmp_path / 'missing'}:{second}")
    assert api.server == "https://127.0.0.1:6443"


def test_a_token_with_a_line_break_is_refused_naming_where_it_came_from(tmp_path: Path) -> None:
    """The request would carry a header the token's line break starts."""
    with pytest.raises(CredentialsError, match="Authorization header from the kubeconfig's credentials holds a line"):
        KubeApi.from_kubeconfig(write(tmp_path / "config", {"token": "abc\r\nX-Other: 1"}))

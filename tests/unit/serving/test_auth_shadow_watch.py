"""Token files, shadow agreement arithmetic, and noticing a swapped ConfigMap mount."""

from __future__ import annotations

import numpy as np
import pytest

from kubeforge.serving.auth import Forbidden, Tokens, Unauthorized
from kubeforge.serving.filewatch import FileWatch
from kubeforge.serving.shadow import agreement


def test_tokens_limit_models_and_refuse_unknown_callers():
    tokens = Tokens("# team tokens\nadmin\n\nreader clf, other  # two models\n")
    tokens.check("Bearer admin", "anything")
    tokens.check("bearer reader", "other")
    with pytest.raises(Forbidden, match="'secret'"):
        tokens.check("Bearer reader", "secret")
    for header in (None, "", "Bearer", "Basic admin", "Bearer nope"):
        with pytest.raises(Unauthorized):
            tokens.check(header, "clf")
    with pytest.raises(ValueError, match="no tokens"):
        Tokens("# nothing\n")


def test_classification_agreement_counts_rows_with_equal_argmax():
    live = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    shadow = np.array([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert agreement("classification", 0.0, live, shadow) == (1, 2)
    assert agreement("classification", 0.0, live, shadow[:2]) == (0, 3)  # shapes differ: nothing agrees


def test_regression_agreement_is_relative_error_within_tolerance():
    live = np.array([[100.0], [1.0], [0.0]])
    shadow = np.array([[100.9], [1.02], [0.0]])
    assert agreement("regression", 0.01, live, shadow) == (2, 1)


def test_file_watch_sees_a_symlink_swap_and_ignores_unchanged_content(tmp_path):
    for name, text in (("a", "one"), ("b", "two"), ("c", "two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "routes.yaml").write_text(text)
    (tmp_path / "..data").symlink_to("a")
    (tmp_path / "routes.yaml").symlink_to("..data/routes.yaml")
    watch = FileWatch(tmp_path / "routes.yaml")
    assert watch.changed() == b"one"
    assert watch.changed() is None

    def swap(target: str) -> None:
        (tmp_path / "tmp").symlink_to(target)
        (tmp_path / "tmp").replace(tmp_path / "..data")

    swap("b")
    assert watch.changed() == b"two"
    swap("c")  # same content in a new file: nothing to reload
    assert watch.changed() is None

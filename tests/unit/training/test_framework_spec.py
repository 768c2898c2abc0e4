"""What a TrainingJob may ask of each framework, refused at admission naming the field and the fix."""

from __future__ import annotations

import pytest

from kubeforge.api import InvalidResource, parse


def _job(model: dict[str, object], **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "t"},
        "spec": {"model": {"name": "m", **model}, "dataset": {"uri": "/d.csv", "target": "y"}, **spec},
    }


@pytest.mark.parametrize(
    ("model", "spec", "field", "words"),
    [
        (
            {"framework": "xgboost"},
            {},
            "spec.model",
            "needs spec.model.estimator, e.g. XGBClassifier",
        ),
        ({"framework": "lightgbm"}, {}, "spec.model", "e.g. LGBMClassifier"),
        (
            {"framework": "lightgbm", "estimator": "LGBMClassifier"},
            {"resources": {"gpus": 1}},
            "spec",
            "spec.resources.gpus: framework lightgbm trains on CPU; set 0 (xgboost can use one GPU)",
        ),
        (
            {"framework": "xgboost", "estimator": "XGBClassifier"},
            {"resources": {"gpus": 2}},
            "spec",
            "xgboost trains on one GPU; set 1",
        ),
        ({"framework": "xgboost", "estimator": "XGBClassifier"}, {"replicas": 2}, "spec", "trains in one process"),
        (
            {"architecture": "mlp", "params": {"n_estimators": 3}},
            {},
            "spec.model",
            "not torch; set spec.model",
        ),
    ],
)
def test_framework_mistakes_are_refused(model: dict, spec: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidResource) as exc:
        parse(_job(model, **spec))
    assert field in exc.value.fields and words in str(exc.value), str(exc.value)


def test_xgboost_may_train_on_one_gpu() -> None:
    job = parse(_job({"framework": "xgboost", "estimator": "XGBClassifier"}, resources={"gpus": 1}))
    assert job.spec.resources.gpus == 1


def test_xgboost_given_a_gpu_fits_on_it_unless_params_name_a_device() -> None:
    from kubeforge.api.trainingjob import ModelSpec
    from kubeforge.training import estimators

    spec = ModelSpec.model_validate({"name": "m", "framework": "xgboost", "estimator": "XGBClassifier"})
    assert estimators.build(spec, gpus=1).get_params()["device"] == "cuda"
    assert estimators.build(spec).get_params()["device"] is None
    pinned = spec.model_copy(update={"params": {"device": "cuda:1"}})
    assert estimators.build(pinned, gpus=1).get_params()["device"] == "cuda:1"

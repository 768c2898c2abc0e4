"""Where a training process records runs and registers model versions."""

import mlflow
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from kubeforge.training import tracking


def test_connect_registers_versions_where_it_records_runs(monkeypatch, tmp_path):
    """A registry URI inherited from the environment must not divert model versions."""
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:9/elsewhere")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # connect() sets MLflow's process-wide URIs; these restore them afterwards.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    uri = (tmp_path / "mlruns").as_uri()

    tracking.connect(uri)

    assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_registry_uri() == uri

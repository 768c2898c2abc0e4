"""The materialization Job of a FeatureView. No I/O: unit-tested without a cluster.

Each run is its own Job, ``<featureview>-mat-<n>``, with ``n`` counted in the view's
status: a restarted operator derives the same name and creates nothing twice. The Job
carries the spec it materializes (an env var), so a spec changed while it runs does not
change what it does; the store settings travel as the env vars the program reads.
"""

from __future__ import annotations

import json
from typing import Any

from ...api import FeatureViewSpec
from ...core.kube import owner_reference
from ...featurestore.commands import SPEC_ENV, TERMINATION_LOG_ENV
from .. import labels, resources
from ..settings import Settings

FEATUREVIEW = "kubeforge.dev/featureview"
"""Label on a FeatureView's Jobs and their pods: the view's name."""
RUN = "kubeforge.dev/materialization"
"""Label on a materialization Job and its pods: the run's number n."""
COMPONENT = "materialization"
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "materialize"
MEMORY_FIELD = "spec.materialization.memory"
"""The spec field that sets the container's memory limit: what a run killed at it is told to raise."""
MAX_NAME = 63 - len("-mat-99999")
"""Longest FeatureView name whose Job names stay valid label values (63 characters) for 99999 runs."""


def job_name(name: str, run: int) -> str:
    return f"{name}-mat-{run}"


def job(owner: dict[str, Any], spec: FeatureViewSpec, run: int, settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job of materialization run number run."""
    meta = owner["metadata"]
    name = meta["name"]
    job_labels = {**labels.common(COMPONENT), FEATUREVIEW: name, RUN: str(run)}
    store = settings.feature_store
    env = [
        {"name": SPEC_ENV, "value": json.dumps(spec.to_wire(), sort_keys=True)},
        *({"name": k, "value": v} for k, v in store.env().items() if v),
        {"name": TERMINATION_LOG_ENV, "value": TERMINATION_LOG},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    run_size = spec.materialization
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.materializer_image,
        "command": ["kubeforge", "features", "materialize-job", "--namespace", meta["namespace"], "--name", name],
        "env": env,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": resources.run(run_size.cpu, run_size.memory),
    }
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if settings.feature_store_pvc:
        container["volumeMounts"] = [{"name": "feature-store", "mountPath": str(store.root)}]
        pod_spec["volumes"] = [
            {"name": "feature-store", "persistentVolumeClaim": {"claimName": settings.feature_store_pvc}}
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, run),
            "namespace": meta["namespace"],
            "labels": job_labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }

"""Pure builders of a TrainingJob's children. No I/O: unit-tested without a cluster.

Each attempt is its own Job named ``<trainingjob>-a<attempt>`` with ``backoffLimit: 0``:
the retry budget is counted on the TrainingJob, so deleting a Job cannot reset it, and a
failed attempt's Job stays around for ``kubectl logs``.

A TrainingJob whose dataset is a FeatureView gets the view (spec and generation, as the
operator read it when the attempt started) next to its own spec in the ConfigMap, since
the trainer has no Kubernetes credentials, and the feature store's settings as env vars
(with its PersistentVolumeClaim, where it is one), as materialization Jobs do.
"""

from __future__ import annotations

from typing import Any

from ...api import TrainingJob
from ...api.trainingjob import INTENDED_USE_ANNOTATION, LIMITATIONS_ANNOTATION, QUEUE_NAME_LABEL
from ...core import yamltext
from ...core.kube import Capabilities, owner_reference
from .. import labels, resources
from ..settings import Settings

SPEC_MOUNT = "/etc/kubeforge"
SPEC_FILE = "trainingjob.yaml"
FEATUREVIEW_FILE = "featureview.yaml"
RENDEZVOUS_PORT = 29500
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "trainer"
MEMORY_FIELDS = {CONTAINER: "spec.resources.memory"}
"""The spec field that sets the trainer's memory limit: what a trainer killed at it is told to raise."""


def spec_configmap_name(name: str) -> str:
    return f"{name}-spec"


def job_name(name: str, attempt: int) -> str:
    return f"{name}-a{attempt}"


def service_name(name: str) -> str:
    return f"{name}-workers"


def _meta(owner: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {**labels.common("trainer"), labels.TRAININGJOB: meta["name"], **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }


def spec_configmap(
    owner: dict[str, Any], tj: TrainingJob, feature_view: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The TrainingJob (spec and identity) as the trainer reads it from its mounted file, and the FeatureView its
    dataset names, if it names one."""
    metadata = {k: owner["metadata"][k] for k in ("name", "namespace", "uid")}
    carded = {
        k: v for k, v in tj.metadata.annotations.items() if k in (INTENDED_USE_ANNOTATION, LIMITATIONS_ANNOTATION)
    }
    if carded:  # for the model card; no other annotation (kubectl's last-applied copy, say) goes to the pod
        metadata["annotations"] = carded
    data = {"apiVersion": tj.api_version, "kind": tj.kind, "metadata": metadata, "spec": tj.spec.to_wire()}
    files = {SPEC_FILE: yamltext.dump(data, sort_keys=False)}
    if feature_view is not None:
        view = {
            "apiVersion": feature_view["apiVersion"],
            "kind": feature_view["kind"],
            "metadata": {k: feature_view["metadata"][k] for k in ("name", "namespace", "uid", "generation")},
            "spec": feature_view["spec"],
        }
        files[FEATUREVIEW_FILE] = yamltext.dump(view, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, spec_configmap_name(owner["metadata"]["name"])),
        "data": files,
    }


def headless_service(owner: dict[str, Any]) -> dict[str, Any]:
    """Stable DNS names for the workers of multi-replica training (rank 0 is the rendezvous host)."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, service_name(name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {labels.TRAININGJOB: name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }


def _command(owner: dict[str, Any], tj: TrainingJob, attempt: int) -> list[str]:
    files = ["--spec", f"{SPEC_MOUNT}/{SPEC_FILE}"]
    if tj.spec.dataset.feature_view is not None:
        files += ["--featureview", f"{SPEC_MOUNT}/{FEATUREVIEW_FILE}"]
    if tj.spec.replicas == 1:
        return ["kubeforge", "train", *files]
    name = owner["metadata"]["name"]
    master = f"{job_name(name, attempt)}-0.{service_name(name)}"
    return [
        "torchrun",
        f"--nnodes={tj.spec.replicas}",
        "--nproc-per-node=1",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={master}",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "kubeforge.training.main",
        *files,
    ]


def _feature_store(settings: Settings, container: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    """The feature store's settings as the env vars the trainer reads, and its volume where it is a PVC."""
    store = settings.feature_store
    container["env"] += [{"name": k, "value": v} for k, v in store.env().items() if v]
    if settings.feature_store_pvc:
        claim = {"claimName": settings.feature_store_pvc}
        container["volumeMounts"].append({"name": "feature-store", "mountPath": str(store.root)})
        pod_spec["volumes"].append({"name": "feature-store", "persistentVolumeClaim": claim})


def job(
    owner: dict[str, Any],
    tj: TrainingJob,
    attempt: int,
    settings: Settings,
    caps: Capabilities,
    deadline_seconds: int | None,
) -> dict[str, Any]:
    """The batch/v1 Job running one attempt."""
    meta = owner["metadata"]
    name = meta["name"]
    pod_labels = {**labels.common("trainer"), labels.TRAININGJOB: name, labels.ATTEMPT: str(attempt)}
    env = [
        {"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_tracking_uri},
        {"name": "KUBEFORGE_TRAININGJOB_NAMESPACE", "value": meta["namespace"]},
        {"name": "KUBEFORGE_TRAININGJOB_NAME", "value": name},
        {"name": "KUBEFORGE_TRAININGJOB_UID", "value": meta["uid"]},
        {"name": "KUBEFORGE_ATTEMPT", "value": str(attempt)},
        {"name": "KUBEFORGE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if (token := tj.spec.dataset.token_secret_ref) is not None:
        secret = {"secretKeyRef": {"name": token.name, "key": token.key}}
        env.append({"name": "KUBEFORGE_DATASET_TOKEN", "valueFrom": secret})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": CONTAINER,
                "image": tj.spec.image or settings.trainer_image,
                "command": _command(owner, tj, attempt),
                "env": env,
                "resources": resources.run(tj.spec.resources.cpu, tj.spec.resources.memory, tj.spec.resources.gpus),
                "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}],
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": [{"name": "spec", "configMap": {"name": spec_configmap_name(name)}}],
    }
    if tj.spec.dataset.feature_view is not None:
        _feature_store(settings, pod_spec["containers"][0], pod_spec)
    if tj.spec.node_selector:
        pod_spec["nodeSelector"] = dict(tj.spec.node_selector)
    if tj.spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in tj.spec.tolerations]
    if tj.spec.priority_class_name:
        pod_spec["priorityClassName"] = tj.spec.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": tj.spec.replicas,
        "parallelism": tj.spec.replicas,
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if tj.spec.replicas > 1:
        # Indexed pods get stable hostnames <job>-<index> under the headless Service.
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = service_name(name)
    if deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, deadline_seconds)
    if tj.spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = tj.spec.ttl_seconds_after_finished
    job_labels = {labels.ATTEMPT: str(attempt)}
    if caps.job_suspend:
        # Queued: created suspended for Kueue to start on admission. The Job is applied once, when the attempt
        # starts, so the operator never sets suspend back over Kueue's decision.
        job_spec["suspend"] = tj.spec.queue_name is not None
    if tj.spec.queue_name:
        job_labels[QUEUE_NAME_LABEL] = tj.spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(owner, job_name(name, attempt), job_labels),
        "spec": job_spec,
    }

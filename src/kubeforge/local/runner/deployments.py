"""apps/v1 Deployments: keep spec.replicas local pods of the current template running.

Pods restart with a back-off when they exit (restartPolicy Always). A new template
(a new generation) replaces the pods all at once: locally there is no capacity to
protect, and the operators' rollouts happen at the gateway, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core import kube
from ...core.conditions import FALSE, TRUE, set_condition
from . import pods

if TYPE_CHECKING:
    from .loop import Runner
    from .state import PodState


def sync(runner: Runner, deployment: dict[str, Any]) -> None:
    """Scale, replace and run the Deployment's pods one tick further and write its status."""
    meta, spec, old = deployment["metadata"], deployment["spec"], deployment.get("status") or {}
    template = spec["template"]
    current = pods.template_hash(template)
    replicas = spec.get("replicas", 1)
    owned: list[PodState] = []
    for pod in runner.state.of_owner(meta["uid"]):
        if pod.template_hash != current or len(owned) >= replicas:
            runner.remove_pod(pod)
        else:
            owned.append(pod)
    while len(owned) < replicas:
        owned.append(runner.create_pod(deployment, template))
    for pod in owned:
        runner.step(pod, template["spec"], restart=True)
    ready = sum(pod.ready for pod in owned)
    available = ready >= replicas
    conditions = set_condition(
        old.get("conditions") or [],
        "Available",
        TRUE if available else FALSE,
        "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
    )
    counts = {
        "replicas": len(owned),
        "updatedReplicas": len(owned),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
    }
    status = {"observedGeneration": meta.get("generation"), **{k: v for k, v in counts.items() if v}}
    status["conditions"] = conditions
    kube.patch_status(runner.api, "apps/v1", "Deployment", meta["name"], meta["namespace"], old, status)

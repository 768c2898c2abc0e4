"""Labels and annotations kubeforge puts on what it creates, so each child can be traced back."""

from __future__ import annotations

PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
TRAININGJOB = "kubeforge.dev/trainingjob"
ATTEMPT = "kubeforge.dev/attempt"
MODELDEPLOYMENT = "kubeforge.dev/modeldeployment"
MODEL_VERSION = "kubeforge.dev/model-version"
ROLE = "kubeforge.dev/role"
MODEL_RUN = "kubeforge.dev/model-run"
"""Annotation of a Triton Deployment: the MLflow run its version was registered from (on the Deployment, so it
restarts nothing), and on its pod template once the version turned out to be another registration (see
deployment.rollout.Plan.reexports)."""

APPLIED = "kubeforge.dev/applied"
"""Annotation of each ModelDeployment child: the digest of the object its owner last applied (without this
annotation), by which a restarted operator tells the children it need not apply again (deployment.applied)."""


def common(component: str) -> dict[str, str]:
    return {PART_OF: "kubeforge", MANAGED_BY: "kubeforge-operator", COMPONENT: component}


LISTEN_ADDRESS_ENV = "KUBEFORGE_LISTEN_ADDRESS"
"""Env var with the address the servers in kubeforge's pods bind to: 0.0.0.0 in a cluster (the pod's
own network), replaced by the local runtime with 127.0.0.1 so nothing it runs is reachable from outside."""

"""Every (API group, resource, verb) the operators use, and the call that needs it.

The Helm chart's ClusterRole grants exactly these (tests/unit/charts compares the two, so a grant the code
does not need fails, as does a call the chart would refuse), and tests/integration/charts runs the operator
under the chart's ServiceAccount. A new kube call in the operators goes here and into
charts/kubeforge/templates/_helpers.tpl.
"""

from __future__ import annotations

CORE = ""
KUBEFORGE = "kubeforge.dev"

# (group, resource) -> {verb: the code that needs it}
NAMESPACED: dict[tuple[str, str], dict[str, str]] = {
    (KUBEFORGE, "trainingjobs"): {
        "get": "training.handlers.reconcile reads the TrainingJob; deployment.handlers._retrain reads its template",
        "list": "kopf watches (initial list); deployment.handlers._retrain lists a deployment's retrain jobs",
        "watch": "kopf.on.event(trainingjobs)",
        "patch": "kopf keeps its progress in annotations (AnnotationsProgressStorage, timers)",
        "create": "deployment.handlers._retrain creates a TrainingJob (kube.create)",
    },
    (KUBEFORGE, "modeldeployments"): {
        "get": "deployment.handlers.reconcile when no event brought the object; _sweep checks an owner is gone",
        "list": "kopf watches (the md_memos index)",
        "watch": "kopf.on.event(modeldeployments)",
        "patch": "kopf removes the finalizer earlier versions added",
    },
    (KUBEFORGE, "featureviews"): {
        "get": "featureview.handlers.reconcile; training and deployment handlers read the view they use",
        "list": "kopf watches",
        "watch": "kopf.on.event(featureviews), in the FeatureView and ModelDeployment operators",
        "patch": "kopf's finalizer (kopf.on.delete) and progress annotations",
    },
    (KUBEFORGE, "trainingjobs/status"): {"patch": "kube.write_status"},
    (KUBEFORGE, "modeldeployments/status"): {"patch": "kube.write_status"},
    (KUBEFORGE, "featureviews/status"): {"patch": "kube.write_status"},
    (CORE, "events"): {"create": "kube.event, on status transitions (kopf's own event posting is off)"},
    (CORE, "pods"): {
        "list": "why pods fail (training._attempt_failure), materialization results; kopf watches",
        "watch": "kopf.on.event(pods) and the md_pods index: why a deployment's pods fail",
    },
    ("batch", "jobs"): {
        "get": "kube.apply_children reads a child the API server refused; training reconcile reads its current Job",
        "list": "kopf watches; featureview reconcile lists its Jobs",
        "watch": "kopf.on.event(jobs) in the TrainingJob and FeatureView operators",
        "create": "server-side apply of a new child (kube.apply)",
        "patch": "server-side apply (kube.apply)",
        "delete": "finished attempts and materializations; a deleted owner's leftover (kube.delete)",
    },
    (CORE, "configmaps"): {
        "get": "kube.apply_children reads a child the API server refused",
        "list": "modeldeployment_deleted; _check_unwatched; applied.Listings (first passes after a start)",
        "create": "server-side apply of a new child",
        "patch": "server-side apply",
        "delete": "modeldeployment_deleted; a deleted owner's leftover",
    },
    (CORE, "services"): {
        "get": "kube.apply_children reads a child the API server refused",
        "list": "modeldeployment_deleted; _check_unwatched; applied.Listings (first passes after a start)",
        "create": "server-side apply of a new child",
        "patch": "server-side apply",
        "delete": "_prune, modeldeployment_deleted; a deleted owner's leftover",
    },
    ("apps", "deployments"): {
        "get": "kube.apply_children reads a child the API server refused",
        "list": "kopf watches (the md_workloads index); modeldeployment_deleted",
        "watch": "kopf.on.event(deployments)",
        "create": "server-side apply of a new child",
        "patch": "server-side apply; _reexport restarts a Triton whose version was registered again",
        "delete": "_prune, modeldeployment_deleted; a deleted owner's leftover",
    },
    ("autoscaling", "horizontalpodautoscalers"): {
        "get": "kube.apply_children reads a child the API server refused",
        "list": "modeldeployment_deleted; _check_unwatched; applied.Listings (first passes after a start)",
        "create": "server-side apply of a new child",
        "patch": "server-side apply",
        "delete": "_prune, modeldeployment_deleted; a deleted owner's leftover",
    },
    ("discovery.k8s.io", "endpointslices"): {
        "list": "kopf watches (the md_addresses index, for endpoints addressing)",
        "watch": "kopf.on.event(endpointslices)",
    },
    ("monitoring.coreos.com", "prometheusrules"): {
        "get": "kube.apply_children reads a refused one (a deployment's own rule, with the Prometheus Operator)",
        "list": "modeldeployment_deleted; applied.Listings (first passes after a start)",
        "create": "server-side apply of a new child",
        "patch": "server-side apply",
        "delete": "modeldeployment_deleted; a deleted owner's leftover",
    },
}

CLUSTER: dict[tuple[str, str], dict[str, str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {
        "list": "kopf's resource observer notices the kinds it serves appear (CRDs installed with the operator)",
        "watch": "kopf's resource observer",
    },
}

CLUSTER_WITH_NAMESPACES: dict[tuple[str, str], dict[str, str]] = {
    (CORE, "namespaces"): {
        "list": "kopf's namespace observer, when the operator watches some namespaces only",
        "watch": "kopf's namespace observer",
    },
}


def pairs(rules: dict[tuple[str, str], dict[str, str]]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every permission in rules."""
    return {(group, resource, verb) for (group, resource), verbs in rules.items() for verb in verbs}

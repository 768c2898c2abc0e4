"""Run the operators in this process (what `kubeforge operator run` and the operator pod do)."""

from __future__ import annotations

import asyncio
import importlib
import logging

import kopf

# Handler modules per kind; importing one registers its handlers with kopf.
HANDLERS = {
    "trainingjob": "kubeforge.operators.training.handlers",
    "modeldeployment": "kubeforge.operators.deployment.handlers",
}


def run(
    kinds: list[str] | None = None,
    namespaces: list[str] | None = None,
    verbose: bool = False,
    liveness: str | None = None,
) -> None:
    """Block running the operators for kinds (default: all) in namespaces (default: all).

    liveness, e.g. ``http://0.0.0.0:8080/healthz``, serves kopf's health endpoint for probes.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    importlib.import_module("kubeforge.operators.runtime")
    for kind in kinds or list(HANDLERS):
        importlib.import_module(HANDLERS[kind])
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            standalone=True,  # one operator per cluster; no peering objects needed
            liveness_endpoint=liveness,
        )
    )

"""Run the operators in this process (what `kubeforge operator run` and the operator pod do)."""

from __future__ import annotations

import importlib
import logging

import kopf
import prometheus_client
import uvloop

from . import indexgate

# Handler modules per kind; importing one registers its handlers with kopf.
HANDLERS = {
    "trainingjob": "kubeforge.operators.training.handlers",
    "modeldeployment": "kubeforge.operators.deployment.handlers",
    "featureview": "kubeforge.operators.featureview.handlers",
}


def load(kinds: list[str] | None = None) -> None:
    """Import what registers the operators' handlers with kopf: the shared runtime, the heap trimming, and the
    handlers of kinds (default: all)."""
    importlib.import_module("kubeforge.operators.runtime")
    importlib.import_module("kubeforge.operators.heap")
    for kind in kinds or list(HANDLERS):
        importlib.import_module(HANDLERS[kind])


class QuietSuccesses(logging.Filter):
    """Drops kopf's line for each handler call that succeeded ("Handler 'job_event' succeeded.", "Timer '...'
    succeeded."): one per watch event and per timer tick, thousands a minute at scale, saying nothing that a
    failure's line, the Events and the metrics do not. `--verbose` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage().endswith("' succeeded."))


def run(
    kinds: list[str] | None = None,
    namespaces: list[str] | None = None,
    verbose: bool = False,
    liveness: str | None = None,
    metrics_address: str | None = None,
) -> None:
    """Block running the operators for kinds (default: all) in namespaces (default: all).

    liveness, e.g. ``http://0.0.0.0:8080/healthz``, serves kopf's health endpoint for probes;
    metrics_address, e.g. ``0.0.0.0:9102``, serves the operators' Prometheus metrics at /metrics.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    if not verbose:
        logging.getLogger("kopf.objects").addFilter(QuietSuccesses())
    if metrics_address:
        host, _, port = metrics_address.rpartition(":")
        prometheus_client.start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    load(kinds)
    indexgate.install()  # a restart over thousands of objects otherwise spends minutes waking workers
    uvloop.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            standalone=True,  # one operator per cluster; no peering objects needed
            liveness_endpoint=liveness,
        )
    )

"""`kubeforge features`: the feature store from the command line.

``list``, ``materialize``, ``get`` and ``training-set`` are for people (see
:mod:`kubeforge.featurestore.usercommands`). ``materialize-job`` is what the FeatureView
operator's materialization Jobs run. It prints Feast's progress to its log and writes one
JSON object to its termination log, which the operator reads back into the FeatureView's
status:

- on success ``{"rows", "onlineRows", "windowStart", "windowEnd", "newestEventTime"}``;
- when the source cannot be used ``{"reason", "message"}`` (``SourceNotFound`` or
  ``SchemaMismatch``, the message naming the column), with the message on stderr and exit
  code 1. Anything else fails with its traceback in the log, whose tail Kubernetes then
  takes as the termination message (``FallbackToLogsOnError``).

Feast is imported inside the commands only, so ``kubeforge --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..core.conditions import rfc3339
from . import usercommands
from .config import StoreSettings

SPEC_ENV = "KUBEFORGE_FEATUREVIEW_SPEC"
"""Env var with the FeatureView's spec (JSON, as written to the API server) that a materialization Job runs."""
TERMINATION_LOG_ENV = "KUBEFORGE_TERMINATION_LOG"


@click.group()
def features() -> None:
    """FeatureViews: list them, materialize one now, read online values, build point-in-time training sets."""


for _command in usercommands.COMMANDS:
    features.add_command(_command)


def _write(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(result))


@features.command("materialize-job")
@click.option("--namespace", required=True, help="Namespace of the FeatureView (its Feast project).")
@click.option("--name", required=True, help="Name of the FeatureView.")
@click.option("--spec", "spec_json", envvar=SPEC_ENV, required=True, help=f"The view's spec as JSON (or ${SPEC_ENV}).")
@click.option(
    "--termination-log",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TERMINATION_LOG_ENV,
    help=f"Where the JSON result goes (or ${TERMINATION_LOG_ENV}).",
)
def materialize_job(namespace: str, name: str, spec_json: str, termination_log: Path | None) -> None:
    """Materialize one FeatureView incrementally, up to now, into the online store (what its Jobs run)."""
    from ..api.featureview import FeatureViewSpec
    from .sources import SourceError
    from .store import Store

    spec = FeatureViewSpec.model_validate(json.loads(spec_json))
    click.echo(f"materializing FeatureView {namespace}/{name}", err=True)
    try:
        done = Store(StoreSettings.from_env(), namespace).materialize(name, spec)
    except SourceError as err:
        _write(termination_log, {"reason": err.reason, "message": str(err)})
        click.echo(f"{err.reason}: {err}", err=True)
        sys.exit(1)
    result = {
        "rows": done.rows,
        "onlineRows": done.online_rows,
        "windowStart": rfc3339(done.start) if done.start else None,
        "windowEnd": rfc3339(done.end),
        "newestEventTime": rfc3339(done.newest) if done.newest else None,
    }
    _write(termination_log, result)
    click.echo(f"materialized {done.rows} rows; {done.online_rows} entities online; {json.dumps(result)}", err=True)
    # Done and recorded: leave without the interpreter's teardown, where a native thread Feast's libraries started
    # can abort the process ("terminate called without an active exception", exit 134) and fail a run that worked.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

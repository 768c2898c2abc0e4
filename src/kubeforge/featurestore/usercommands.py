"""`kubeforge features list | materialize | get | training-set`: FeatureViews from the command line.

FeatureViews are read from the API server (``--kubeconfig`` or ``$KUBECONFIG``, ``-n``), so
a name means what ``kubectl get featureview`` shows. ``list`` and ``materialize`` need
nothing else; ``get`` and ``training-set`` then read the feature store itself, at the
location the operator uses (``KUBEFORGE_FEAST_*``; without them, the local runtime's store,
which the entry point passes in ``ctx.obj[STORE]``).

``materialize`` never runs a materialization itself: the operator runs one Job per run and
keeps at most one per view, so the command asks it for a run through the
``kubeforge.dev/materialize-now`` annotation and follows the view's status until that run
ends. Feast is imported by the commands that read the store, never at start-up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..core.conditions import parse_rfc3339
from .config import StoreSettings

if TYPE_CHECKING:
    from ..api import FeatureView

STORE = "feature_store"
"""Key of ctx.obj holding a zero-argument callable that returns the StoreSettings to use."""
MATERIALIZE_NOW = "kubeforge.dev/materialize-now"
"""The annotation the FeatureView operator answers with one materialization run per new value."""
_REGISTRATION_PROBLEMS = ("InvalidSpec", "SourceNotFound", "SchemaMismatch", "RegistrationFailed")
_NONE = "-"


def _settings(ctx: click.Context) -> StoreSettings:
    make: Callable[[], StoreSettings] | None = (ctx.obj or {}).get(STORE)
    return make() if make else StoreSettings.from_env()


# --- the API server ---------------------------------------------------------------------
@contextlib.contextmanager
def _api_errors(kubeconfig: str | None) -> Iterator[None]:
    """Credentials that cannot be loaded and a server that does not answer become one line saying so."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    from ..core import kube

    where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
    try:
        yield
    except ConfigException as err:
        raise click.ClickException(
            f"no usable kubeconfig ({where}): {err}; pass --kubeconfig or set KUBECONFIG"
        ) from None
    except HTTPError as err:
        raise click.ClickException(f"cannot reach the API server of {where}: {err}") from None
    except (ApiException, kube.ApiError) as err:
        raise click.ClickException(f"the API server refused: {err.status} {err.reason}: {err.body}") from None


def _client(kubeconfig: str | None) -> Any:
    from ..core import kube

    return kube.api_client(kubeconfig)


def _namespace(kubeconfig: str | None, namespace: str | None) -> str:
    """-n, else the kubeconfig's current context's namespace, else default (as kubectl does)."""
    if namespace:
        return namespace
    from kubernetes import config

    with contextlib.suppress(config.ConfigException, OSError):
        _, current = config.list_kube_config_contexts(config_file=kubeconfig or os.environ.get("KUBECONFIG"))
        return str((current or {}).get("context", {}).get("namespace") or "default")
    return "default"


def _get(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from ..api import API_VERSION
    from ..core import kube

    body = kube.get(api, API_VERSION, "FeatureView", name, namespace)
    if body is None:
        raise click.ClickException(
            f"FeatureView {name!r} not found in namespace {namespace!r}: "
            f"`kubeforge features list -n {namespace}` lists the views there"
        )
    return body


def _view(body: dict[str, Any]) -> FeatureView:
    from ..api import API_VERSION, FeatureView, InvalidResource, parse

    meta = body["metadata"]
    obj = {"apiVersion": API_VERSION, "kind": "FeatureView", "metadata": meta, "spec": body.get("spec")}
    try:
        view = parse(obj)
    except InvalidResource as err:
        raise click.ClickException(f"FeatureView {meta['name']!r} has an invalid spec: {err}") from None
    assert isinstance(view, FeatureView)
    return view


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


kubeconfig_option = click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), help="Defaults to $KUBECONFIG or ~/.kube/config."
)
namespace_option = click.option(
    "-n", "--namespace", help="Namespace of the FeatureViews (default: the kubeconfig context's, else default)."
)


# --- list -------------------------------------------------------------------------------
def _age(since: str | None) -> str:
    """The age of an RFC 3339 time as kubectl shows one: 42s, 5m, 3h, 2d."""
    when = parse_rfc3339(since)
    if when is None:
        return _NONE
    seconds = max(0.0, (datetime.now(UTC) - when).total_seconds())
    for unit, size, shown_below in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 172800)):
        if seconds < shown_below:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds // 86400)}d"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), *lines])


def _ready(body: dict[str, Any]) -> str:
    ready = _condition(body, "Ready")
    if not ready:
        return "Unknown"
    return ready["status"] if ready["status"] == "True" else f"{ready['status']} ({ready.get('reason', '')})"


@click.command("list")
@kubeconfig_option
@namespace_option
def list_views(kubeconfig: str | None, namespace: str | None) -> None:
    """The FeatureViews of a namespace: entities, features, Ready, freshness, last materialization, online rows."""
    from ..api import API_VERSION
    from ..core import kube

    with _api_errors(kubeconfig):
        ns = _namespace(kubeconfig, namespace)
        views = kube.list_objects(_client(kubeconfig), API_VERSION, "FeatureView", ns, "")
    if not views:
        click.echo(f"no FeatureViews in namespace {ns}")
        return
    rows = []
    for body in sorted(views, key=lambda v: v["metadata"]["name"]):
        spec, status = body.get("spec") or {}, body.get("status") or {}
        rows.append(
            [
                body["metadata"]["name"],
                ",".join(e["name"] for e in spec.get("entities", [])),
                ",".join(f["name"] for f in spec.get("features", [])),
                _ready(body),
                _age(status.get("newestEventTime")),
                status.get("lastMaterializedTime") or _NONE,
                str(status["onlineRows"]) if status.get("onlineRows") is not None else _NONE,
            ]
        )
    headers = ["NAME", "ENTITIES", "FEATURES", "READY", "FRESHNESS", "LAST MATERIALIZED", "ONLINE ROWS"]
    click.echo(_table(headers, rows))


# --- materialize ------------------------------------------------------------------------
class _Progress:
    """A spinner with the elapsed time on a terminal; elsewhere (logs, CI) one line per change of state."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.spinner = itertools.cycle("|/-\\")
        self.shown = ""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def show(self, state: str) -> None:
        if self.tty:
            line = f"{next(self.spinner)} {state} ({self.elapsed:.0f}s)"
            click.echo(f"\r{line.ljust(len(self.shown))}", nl=False, err=True)
            self.shown = line
        elif state != self.shown:
            click.echo(f"{state} ({self.elapsed:.0f}s)", err=True)
            self.shown = state

    def done(self) -> None:
        if self.tty and self.shown:
            click.echo(f"\r{' ' * len(self.shown)}\r", nl=False, err=True)


def _waiting_for(body: dict[str, Any], token: str) -> tuple[str, dict[str, Any] | None]:
    """(what the run asked for waits for, the run's record once it has ended); ClickException when it cannot come."""
    status = body.get("status") or {}
    last = status.get("lastMaterialization") or {}
    name = body["metadata"]["name"]
    if status.get("materializeNow") == token:
        if last.get("phase") in ("Succeeded", "Failed"):
            return "", last
        return f"Job {last.get('job')} materializes {name}", None
    ready = _condition(body, "Ready")
    if status.get("registeredGeneration") != body["metadata"].get("generation"):
        if ready.get("reason") in _REGISTRATION_PROBLEMS:
            raise click.ClickException(
                f"FeatureView {name} cannot be registered, so nothing is materialized: "
                f"{ready['reason']}: {ready.get('message', '')}"
            )
        return f"waiting for the operator to register {name}", None
    if last.get("phase") == "Running":
        return f"waiting for Job {last.get('job')}, which runs now, to finish first", None
    return f"waiting for the operator to answer {MATERIALIZE_NOW}", None


@click.command("materialize")
@click.argument("name")
@kubeconfig_option
@namespace_option
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds to wait.")
def materialize(name: str, kubeconfig: str | None, namespace: str | None, timeout: float) -> None:
    """Ask the operator for a materialization run of NAME now and follow it until it ends.

    The run is the operator's Job, as scheduled runs are; exits 1 with its reason when it fails.
    """
    from ..api import API_VERSION
    from ..core import kube

    progress = _Progress()
    with _api_errors(kubeconfig):
        api, ns = _client(kubeconfig), _namespace(kubeconfig, namespace)
        body = _get(api, ns, name)
        if not (body.get("spec") or {}).get("online", True):
            raise click.ClickException(f"FeatureView {name} has spec.online false: nothing is materialized for it")
        token = datetime.now(UTC).isoformat(timespec="microseconds")
        patch = {"metadata": {"annotations": {MATERIALIZE_NOW: token}}}
        kube.resource(api, API_VERSION, "FeatureView").patch(
            name=name, namespace=ns, body=patch, content_type="application/merge-patch+json"
        )
        try:
            while True:
                state, ended = _waiting_for(body, token)
                if ended is not None:
                    break
                progress.show(state)
                if progress.elapsed > timeout:
                    raise click.ClickException(
                        f"{state} for {timeout:.0f}s; gave up (the run, if it started, goes on): "
                        f"is the operator running? `kubectl describe featureview {name} -n {ns}` says more"
                    )
                time.sleep(0.25 if progress.tty else 1.0)
                body = _get(api, ns, name)
        finally:
            progress.done()
    status = body.get("status") or {}
    took = f"{progress.elapsed:.0f}s"
    if ended["phase"] == "Failed":
        raise click.ClickException(
            f"Job {ended['job']} failed after {took}: {ended.get('reason')}: {ended.get('message', '')}"
        )
    rows = f"{ended['rows']} rows written" if ended.get("rows") is not None else "done (its result went with its pod)"
    online = f"; {status['onlineRows']} entities online" if status.get("onlineRows") is not None else ""
    until = f", values up to {ended['windowEnd']}" if ended.get("windowEnd") else ""
    click.echo(f"materialized {name} with Job {ended['job']} in {took}: {rows}{until}{online}")


# --- get --------------------------------------------------------------------------------
def _parse_value(text: str, key: str, value_type: str, given: str) -> Any:
    if value_type in ("INT64", "INT32"):
        try:
            return int(text)
        except ValueError:
            message = f"{given}: join key {key!r} holds {value_type} values, not {text!r}"
            raise click.BadParameter(message, param_hint="--entity") from None
    return text.encode() if value_type == "BYTES" else text


def entity_rows(view: FeatureView, given: tuple[str, ...]) -> dict[str, list[Any]]:
    """--entity KEY=VALUE[,KEY=VALUE...] options (one entity each) as Feast's {join key: [values]}."""
    types = {key: e.value_type for e in view.spec.entities for key in e.join_keys}
    name, keys = view.metadata.name, list(types)
    example = ",".join(f"{k}=..." for k in keys)
    rows: dict[str, list[Any]] = {k: [] for k in keys}
    for text in given:
        values: dict[str, Any] = {}
        for pair in text.split(","):
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise click.BadParameter(
                    f"{text!r}: write KEY=VALUE, one entity per --entity (e.g. --entity {example})",
                    param_hint="--entity",
                )
            if key not in types:
                raise click.BadParameter(
                    f"{text}: {key!r} is not a join key of FeatureView {name}; its join keys: {', '.join(keys)}",
                    param_hint="--entity",
                )
            if key in values:
                raise click.BadParameter(f"{text}: {key!r} is given twice", param_hint="--entity")
            values[key] = _parse_value(value.strip(), key, types[key], text)
        if absent := [k for k in keys if k not in values]:
            raise click.BadParameter(
                f"{text}: no value for join key {', '.join(map(repr, absent))}: give all of them (--entity {example})",
                param_hint="--entity",
            )
        for key in keys:
            rows[key].append(values[key])
    return rows


def _features(view: FeatureView, given: str | None) -> list[str]:
    """--features a,b (checked against the view) or all the view's features, in order."""
    available = [f.name for f in view.spec.features]
    if not given:
        return available
    wanted = [f.strip() for f in given.split(",") if f.strip()]
    if unknown := [f for f in wanted if f not in available]:
        raise click.BadParameter(
            f"{', '.join(unknown)} not a feature of FeatureView {view.metadata.name}; its features: "
            f"{', '.join(available)}",
            param_hint="--features",
        )
    return wanted


def _store(ctx: click.Context, view: FeatureView) -> Any:
    """The view's namespace in the feature store; ClickException when the view is not registered there."""
    from .store import Store

    settings = _settings(ctx)
    store = Store(settings, view.metadata.namespace or "")
    if not store.registered(view.metadata.name or ""):
        raise click.ClickException(
            f"FeatureView {view.metadata.name} is not registered in the feature store ({settings.registry_location}): "
            f"its operator registers it; `kubectl describe featureview {view.metadata.name}` says why it has not "
            f"(or set KUBEFORGE_FEAST_* to the store the operator uses)"
        )
    return store


def _read_view(kubeconfig: str | None, namespace: str | None, name: str) -> FeatureView:
    with _api_errors(kubeconfig):
        ns = _namespace(kubeconfig, namespace)
        return _view(_get(_client(kubeconfig), ns, name))


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


features_option = click.option(
    "--features", metavar="A,B,...", help="Features to read, in this order (default: all of the view's)."
)


@click.command("get")
@click.argument("name")
@click.option(
    "--entity",
    "entities",
    multiple=True,
    required=True,
    metavar="KEY=VALUE[,KEY=VALUE]",
    help="One entity by its join keys; repeat for more entities.",
)
@features_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@kubeconfig_option
@namespace_option
@click.pass_context
def get(
    ctx: click.Context,
    name: str,
    entities: tuple[str, ...],
    features: str | None,
    output: str,
    kubeconfig: str | None,
    namespace: str | None,
) -> None:
    """Online values of NAME's features for the given entities, as served: values older than the ttl are expired."""
    from ..api.meta import duration_seconds

    view = _read_view(kubeconfig, namespace, name)
    rows, wanted = entity_rows(view, entities), _features(view, features)
    ttl = view.spec.ttl
    values = _store(ctx, view).online(name, wanted, rows, duration_seconds(ttl))
    keys = list(rows)
    missing = {(i, f): "missing" for i, f in values.missing} | {(i, f): "expired" for i, f in values.expired}
    if output == "json":
        result = [
            {
                "entity": {k: _json_value(rows[k][i]) for k in keys},
                "values": {f: _json_value(v) for f, v in zip(wanted, row, strict=True)},
                "missing": [f for f in wanted if missing.get((i, f)) == "missing"],
                "expired": [f for f in wanted if missing.get((i, f)) == "expired"],
            }
            for i, row in enumerate(values.rows)
        ]
        click.echo(json.dumps({"featureView": name, "ttl": ttl, "rows": result}, indent=2))
        return

    def cell(i: int, feature: str, value: Any) -> str:
        return f"<{missing[(i, feature)]}>" if (i, feature) in missing else str(_json_value(value))

    table = [
        [str(_json_value(rows[k][i])) for k in keys] + [cell(i, f, v) for f, v in zip(wanted, row, strict=True)]
        for i, row in enumerate(values.rows)
    ]
    click.echo(_table([*keys, *wanted], table))
    for kind, why in (("missing", "no value in the online store"), ("expired", f"older than the ttl, {ttl}")):
        by_row: dict[int, list[str]] = {}
        for (i, feature), found in missing.items():
            if found == kind:
                by_row.setdefault(i, []).append(feature)
        if by_row:
            entity = {i: ",".join(f"{k}={_json_value(rows[k][i])}" for k in keys) for i in by_row}
            click.echo(f"{kind} ({why}): " + "; ".join(f"{entity[i]}: {', '.join(by_row[i])}" for i in sorted(by_row)))


# --- training-set -----------------------------------------------------------------------
_READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: Path, option: str) -> str:
    fmt = _READERS.get(path.suffix.lower())
    if fmt is None:
        raise click.BadParameter(f"{path}: name a .csv or .parquet file", param_hint=option)
    return fmt


@click.command("training-set")
@click.argument("name")
@click.option(
    "--entities",
    "entities_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV or parquet file of entity rows: the view's join keys, event_timestamp, and any labels to keep.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV or parquet file to write."
)
@features_option
@kubeconfig_option
@namespace_option
@click.pass_context
def training_set(
    ctx: click.Context,
    name: str,
    entities_path: Path,
    out: Path,
    features: str | None,
    kubeconfig: str | None,
    namespace: str | None,
) -> None:
    """Join NAME's features onto entity rows point in time (no value from after a row's event_timestamp) into OUT.

    Every entity row is kept, in order; a row with no value for a feature (none before its
    timestamp, or only one older than the view's ttl) has it empty and is counted.
    """
    import pandas as pd

    from .trainingsets import EntitiesError, NotRegistered, join

    read_as, write_as = _format(entities_path, "--entities"), _format(out, "--out")
    view = _read_view(kubeconfig, namespace, name)
    wanted = _features(view, features)
    rows = pd.read_csv(entities_path) if read_as == "csv" else pd.read_parquet(entities_path)
    try:
        joined = join(_settings(ctx), view, wanted, rows)
    except EntitiesError as err:
        raise click.ClickException(f"--entities {entities_path}: {err}") from None
    except NotRegistered as err:
        raise click.ClickException(str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if write_as == "csv":
        joined.to_csv(out, index=False)
    else:
        joined.to_parquet(out, index=False)
    empty = joined[wanted].isna()
    without = int(empty.any(axis=1).sum())
    click.echo(f"wrote {len(joined)} rows to {out}: {', '.join(wanted)} from FeatureView {name}")
    if without:
        counts = ", ".join(f"{f} ({int(n)})" for f, n in empty.sum().items() if n)
        click.echo(f"{without} of {len(joined)} rows have no value for some feature: {counts}")
    else:
        click.echo("every row has a value for every feature")


COMMANDS = (list_views, materialize, get, training_set)

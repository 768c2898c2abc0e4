"""`kubeforge model card` and `kubeforge lineage`: what a version is, and where what serves came from.

The card is the trainer's (:mod:`kubeforge.core.modelcard`), with the approval the registry
holds now. Lineage walks ModelDeployment → the versions serving and their roles → MLflow
version and run → TrainingJob → dataset (URI and sha256, or FeatureView and generation) →
the retrain trigger that created the TrainingJob, if one did; or starts from a TrainingJob
or a model version. It reads the API server and MLflow and writes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import click
from pydantic import ValidationError

from ..api import API_VERSION
from ..api.trainingjob import RETRAIN_OF_LABEL, RETRAIN_TRIGGER_LABEL
from ..core import approval, modelcard
from ..core import modelcontract as mc
from ..core.mlflow_rest import MLflowError, MLflowRegistry, ModelVersion, NotFound
from ..featurestore.usercommands import _api_errors, _client, _namespace
from .approvals import tracking_uri

_tracking_option = click.option(
    "--tracking-uri", help="MLflow (default: $MLFLOW_TRACKING_URI or the local platform's)."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_ROLES = (("stable", "stableVersion"), ("canary", "canaryVersion"), ("shadow", "shadowVersion"))


def _registry(ctx: click.Context, given: str | None) -> MLflowRegistry:
    return MLflowRegistry(tracking_uri(ctx, given))


def _version(registry: MLflowRegistry, name: str, version: str) -> ModelVersion:
    try:
        return registry.by_version(name, version)
    except NotFound:
        raise click.ClickException(str(approval.missing(registry, name, version))) from None
    except MLflowError as err:
        raise click.ClickException(f"MLflow: {err}") from err


@click.command("card")
@click.argument("name")
@click.argument("version")
@_tracking_option
@_json_option
@click.pass_context
def card(ctx: click.Context, name: str, version: str, tracking_uri: str | None, as_json: bool) -> None:
    """Print the model card of VERSION of model NAME, with its approval as the registry holds it now."""
    registry = _registry(ctx, tracking_uri)
    found = _version(registry, name, version)
    try:
        raw = registry.artifact(found.run_id, modelcard.CARD_JSON)
        current = modelcard.ModelCard.model_validate_json(raw).with_approval(found.tags)
    except NotFound:
        how = "it was imported" if mc.TAG_IMPORTED_FILE in found.tags else "it was registered without one"
        raise click.ClickException(f"version {version} of {name} has no model card ({how})") from None
    except (MLflowError, ValidationError) as err:
        raise click.ClickException(f"cannot read the model card of version {version} of {name}: {err}") from err
    click.echo(current.model_dump_json(indent=2) if as_json else modelcard.markdown(current), nl=not as_json)


def _trainingjob(kubeconfig: str | None, namespace: str, name: str) -> dict[str, Any] | None:
    from ..core import kube

    with _api_errors(kubeconfig):
        return kube.get(_client(kubeconfig), API_VERSION, "TrainingJob", name, namespace)


def _version_lineage(registry: MLflowRegistry, kubeconfig: str | None, name: str, version: str) -> dict[str, Any]:
    """One version's chain: registry → run → TrainingJob → data → retrain trigger."""
    found = _version(registry, name, version)
    tags = found.tags
    entry: dict[str, Any] = {
        "model": name,
        "version": version,
        "run": found.run_id,
        "framework": tags.get(mc.TAG_FRAMEWORK, "torch"),
        "approval": approval.Approval.of(tags).describe(),
        "data": mc.trained_on(tags),
    }
    if view := tags.get(mc.TAG_FEATUREVIEW):
        entry["data"]["featureView"] = view
        entry["data"]["featureViewGeneration"] = tags.get(mc.TAG_FEATUREVIEW_GENERATION, "")
    if imported := tags.get(mc.TAG_IMPORTED_FILE):
        entry["imported"] = {"file": imported, "sha256": tags.get(mc.TAG_IMPORTED_SHA256, "")}
    job_ns, job_name = tags.get(mc.TAG_JOB_NAMESPACE) or "default", tags.get(mc.TAG_JOB_NAME)
    if job_name:
        entry["trainingJob"] = job = {"namespace": job_ns, "name": job_name}
        try:
            obj = _trainingjob(kubeconfig, job_ns, job_name)
        except click.ClickException as err:  # MLflow alone still tells the rest of the chain
            job.update(state="unknown", error=err.message)
            return entry
        if obj is None or obj["metadata"].get("uid") != tags.get(mc.TAG_JOB_UID):
            job["state"] = "deleted" if obj is None else "deleted (a new TrainingJob has its name)"
            return entry
        labels = obj["metadata"].get("labels") or {}
        job["state"] = (obj.get("status") or {}).get("phase") or "Pending"
        if labels.get(RETRAIN_OF_LABEL):
            entry["retrain"] = {"of": labels[RETRAIN_OF_LABEL], "trigger": labels.get(RETRAIN_TRIGGER_LABEL, "")}
    return entry


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("ROLE", "VERSION", "FRAMEWORK", "TRAININGJOB", "DATA", "SHA256", "RETRAIN", "APPROVAL")
    lines = [header]
    for r in rows:
        job = r.get("trainingJob")
        data = r["data"]
        source = (
            f"featureview/{data['featureView']} gen {data['featureViewGeneration']}"
            if data.get("featureView")
            else data.get("uri") or (f"imported {r['imported']['file']}" if r.get("imported") else "-")
        )
        retrain = r.get("retrain")
        lines.append(
            (
                r.get("role", "-"),
                f"{r['model']}/{r['version']}",
                r["framework"],
                f"{job['namespace']}/{job['name']} ({job['state']})" if job else "-",
                source,
                (data.get("sha256") or r.get("imported", {}).get("sha256", ""))[:12] or "-",
                f"md/{retrain['of']} on {retrain['trigger']}" if retrain else "-",
                r["approval"],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@click.command("lineage")
@click.argument("target")
@click.argument("rest", nargs=-1)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Defaults to $KUBECONFIG or ~/.kube/config.")
@click.option("-n", "--namespace", help="Namespace of the ModelDeployment or TrainingJob.")
@_tracking_option
@_json_option
@click.pass_context
def lineage(
    ctx: click.Context,
    target: str,
    rest: tuple[str, ...],
    kubeconfig: str | None,
    namespace: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Where what serves came from: TARGET is md/NAME, tj/NAME, or `model NAME VERSION`.

    For each version: its role, MLflow run, TrainingJob, dataset URI and sha256 (or FeatureView and
    generation), the retrain trigger that made it, and its approval.
    """
    from ..core import kube

    kind, _, name = target.partition("/")
    kinds = {"md": "ModelDeployment", "modeldeployment": "ModelDeployment", "tj": "TrainingJob"}
    kinds["trainingjob"] = "TrainingJob"
    if target == "model" and len(rest) == 2:
        registry = _registry(ctx, tracking_uri)
        root: dict[str, Any] = {"kind": "ModelVersion", "namespace": "", "name": f"{rest[0]}/{rest[1]}"}
        root["model"] = rest[0]
        rows = [_version_lineage(registry, kubeconfig, rest[0], rest[1])]
    elif kind in kinds and name and not rest:
        with _api_errors(kubeconfig):
            ns = _namespace(kubeconfig, namespace)
            obj = kube.get(_client(kubeconfig), API_VERSION, kinds[kind], name, ns)
        if obj is None:
            raise click.ClickException(f"{kinds[kind]} {name!r} not found in namespace {ns!r}: pass -n")
        registry = _registry(ctx, tracking_uri)
        model_name, st = obj["spec"]["model"]["name"], obj.get("status") or {}
        root = {"kind": kinds[kind], "namespace": ns, "name": name, "model": model_name}
        if kinds[kind] == "ModelDeployment":
            serving = [(role, st[key]) for role, key in _ROLES if st.get(key)]
        else:
            serving = [("trained", v)] if (v := (st.get("mlflow") or {}).get("modelVersion")) else []
        rows = [{"role": role, **_version_lineage(registry, kubeconfig, model_name, v)} for role, v in serving]
    else:
        raise click.UsageError(f"{' '.join((target, *rest))!r}: name md/NAME, tj/NAME, or model NAME VERSION")
    if as_json:
        click.echo(json.dumps({**root, "versions": rows}, indent=2))
        return
    where = f"{root['namespace']}/" if root["namespace"] else ""
    click.echo(f"{root['kind']} {where}{root['name']} (model {root['model']})")
    click.echo(_table(rows) if rows else "no version serves or was registered yet")

"""`kubeforge model approve | reject NAME VERSION`: record a decision about a registered version in MLflow.

The decision is kept as tags of the model version (see :mod:`kubeforge.core.approval`), where
ModelDeployments with ``spec.policy.requireApproval`` read it at their next registry poll: an
approved version rolls out without anyone touching the ModelDeployment, a rejected one never does.
MLflow is ``--tracking-uri``, else ``$KUBEFORGE_MLFLOW_TRACKING_URI`` or ``$MLFLOW_TRACKING_URI``,
else the local platform's (which the entry point passes in ``ctx.obj[TRACKING_URI]``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from datetime import UTC, datetime

import click

from ..core import approval
from ..core.mlflow_rest import MLflowError, MLflowRegistry

TRACKING_URI = "mlflow_tracking_uri"
"""Key of ctx.obj holding a zero-argument callable that returns the default MLflow address, or None."""


def decider(kubeconfig: str | None) -> str:
    """Who decides when --by is not given: the user of the kubeconfig's current context, else $USER."""
    from kubernetes import config
    from kubernetes.config import ConfigException

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        user = ((active or {}).get("context") or {}).get("user")
    except (ConfigException, OSError):
        user = None
    return user or os.environ.get("USER") or getpass.getuser()


def tracking_uri(ctx: click.Context, given: str | None) -> str:
    """The MLflow a registry command talks to: given, else the entry point's default."""
    if given:
        return given
    default: Callable[[], str | None] | None = (ctx.obj or {}).get(TRACKING_URI)
    found = default() if default else None
    if not found:
        raise click.ClickException(
            "no MLflow to talk to: pass --tracking-uri, set MLFLOW_TRACKING_URI, or start the "
            "local platform (`kubeforge up`)"
        )
    return found


def _decide(
    ctx: click.Context, state: str, name: str, version: str, note: str, by: str | None, force: bool, **where: str | None
) -> None:
    uri = tracking_uri(ctx, where["tracking_uri"])
    who = by or decider(where["kubeconfig"])
    registry = MLflowRegistry(uri)
    try:
        previous, new = approval.record(registry, name, version, state, who, note, datetime.now(UTC), force)
    except approval.ApprovalError as err:
        raise click.ClickException(str(err)) from None
    except MLflowError as err:
        raise click.ClickException(f"cannot record the decision in MLflow at {uri}: {err}") from None
    was = f" (it was {previous.describe()})" if previous.state else ""
    click.echo(f"version {version} of {name} {new.describe()}{was}")
    if state == approval.APPROVED:
        click.echo("ModelDeployments with spec.policy.requireApproval roll it out at their next registry poll")
    else:
        click.echo(
            "ModelDeployments with spec.policy.requireApproval do not roll it out, and withdraw it where it is a "
            "canary or shadow; where it already serves as stable it keeps serving until another approved version "
            "replaces it"
        )


def _options(command: Callable[..., None]) -> Callable[..., None]:
    """NAME VERSION and the options approve and reject share."""
    for option in reversed(
        [
            click.argument("name"),
            click.argument("version"),
            click.option("--note", default="", help="Why; kept with the decision and shown by ModelDeployments."),
            click.option("--by", help="Who decides (default: the kubeconfig's current user, else $USER)."),
            click.option(
                "--tracking-uri",
                envvar=["KUBEFORGE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"],
                show_envvar=True,
                help="MLflow's address (default: from the environment, else the local platform's MLflow).",
            ),
            click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Where --by's default is read from."),
        ]
    ):
        command = option(command)
    return command


@click.command("approve")
@_options
@click.option("--force", is_flag=True, help="Approve a version that was rejected.")
@click.pass_context
def approve(ctx: click.Context, name: str, version: str, note: str, by: str | None, force: bool, **where: str) -> None:
    """Approve VERSION of model NAME for rollout.

    ModelDeployments with spec.policy.requireApproval that wait for it proceed by themselves. A rejected version
    needs --force."""
    _decide(ctx, approval.APPROVED, name, version, note, by, force, **where)


@click.command("reject")
@_options
@click.pass_context
def reject(ctx: click.Context, name: str, version: str, note: str, by: str | None, **where: str) -> None:
    """Reject VERSION of model NAME: it is never rolled out.

    ModelDeployments with spec.policy.requireApproval do not roll it out, and take it back where it is a canary or
    shadow."""
    _decide(ctx, approval.REJECTED, name, version, note, by, False, **where)

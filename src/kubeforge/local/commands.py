"""`kubeforge up`, `down`, `status` and `local runner`: the local runtime from the command line.

Runtime modules are imported inside the commands, so `kubeforge --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _default_data_dir() -> Path:
    from .runtime import default_data_dir

    return default_data_dir()


_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_default_data_dir,
    show_default="$KUBEFORGE_DATA_DIR or ~/.local/share/kubeforge",
    help="Everything the local runtime keeps (cluster state, MLflow, workloads, logs); survives down/up.",
)

_listen_address = click.option(
    "--listen-address",
    default="127.0.0.1",
    show_default=True,
    help="Address the workloads' servers (Triton, gateways) bind to; 0.0.0.0 exposes them to the network.",
)


@click.command("up")
@_data_dir
@_listen_address
def up(data_dir: Path, listen_address: str) -> None:
    """Run the platform locally: control plane, CRDs, MLflow, operators, workload runner and their supervisor."""
    from . import runtime

    try:
        cp, state = runtime.up(data_dir, listen_address)
    except runtime.UpFailed as err:
        raise click.ClickException(str(err)) from err
    layout = runtime.Layout(data_dir)
    click.echo(f"API server:  {cp.server}")
    click.echo(f"MLflow UI:   {state.mlflow_url}")
    click.echo(f"Prometheus:  {state.prometheus_url}")
    click.echo(f"Alertmanager: {state.alertmanager_url}")
    click.echo(f"logs:        {layout.logs} (workloads: {layout.workloads}/<namespace>/<pod>/<container>.log)")
    click.echo("supervisor:  starts again any part that stops; `kubeforge status` shows its last restart")
    click.echo(f"kubeconfig:  {cp.kubeconfig}")
    click.echo(f"export KUBECONFIG={cp.kubeconfig}")
    click.echo("gateway URLs: `kubectl get md -o wide` once a ModelDeployment is deployed")


@click.command("down")
@_data_dir
def down(data_dir: Path) -> None:
    """Stop the supervisor, workloads, runner, operators, MLflow and the control plane; data stays."""
    from . import runtime

    pods = runtime.down(data_dir)
    click.echo(f"stopped ({pods} workload pod(s) were running); data kept in {data_dir}")


@click.command("status")
@_data_dir
def status(data_dir: Path) -> None:
    """Show each part of the local runtime, whether it runs and the supervisor's last restart; exit 1 when one does
    not run."""
    from . import runtime

    parts = runtime.status(data_dir)
    for name, running, where in parts:
        click.echo(f"{name:<14} {'running' if running else 'stopped':<8} {where}")
    if not all(running for _, running, _ in parts):
        sys.exit(1)


@click.group("local")
def local() -> None:
    """Processes of the local runtime."""


@local.command("runner")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True)
@_data_dir
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between reconciliations.")
@click.option("--namespace-selector", help="Only run workloads in namespaces with these labels, e.g. team=ml.")
@_listen_address
@click.option(
    "--prometheus-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Load PrometheusRule objects into the local Prometheus whose data is here.",
)
@click.option(
    "--health-address",
    metavar="HOST:PORT",
    help="Serve /healthz, which answers 200 while the runner's loop goes round, e.g. 127.0.0.1:9103 (off).",
)
@click.option("--verbose", "-v", is_flag=True)
def runner(
    kubeconfig: Path,
    data_dir: Path,
    interval: float,
    namespace_selector: str | None,
    listen_address: str,
    prometheus_dir: Path | None,
    health_address: str | None,
    verbose: bool,
) -> None:
    """Run kubeforge's Jobs and Deployments as local processes (the local kubelet) until stopped."""
    import logging

    from ..core import kube
    from .runner import Runner

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    api = kube.api_client(kubeconfig)
    runner = Runner(api, data_dir, interval, namespace_selector, listen_address, prometheus_dir)
    if health_address:
        host, _, port = health_address.rpartition(":")
        runner.health.serve(host.strip("[]") or "127.0.0.1", int(port))
    runner.run()


local_runtime = click.Group("kubeforge", commands=[up, down, status, local])
"""All of the above; `kubeforge` registers each of its commands at top level."""

if __name__ == "__main__":
    local_runtime()

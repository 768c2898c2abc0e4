"""The `kubeforge` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__
from .featurestore import usercommands
from .featurestore.commands import features
from .local.commands import down, local, status, up
from .serving import approvals, provenance
from .serving.commands import serving
from .serving.usercommands import dataset, feedback
from .training.usercommands import model_import

if TYPE_CHECKING:
    from .featurestore.config import StoreSettings


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "kubeforge"


def _default_cp_dir() -> Path:
    return Path(os.environ.get("KUBEFORGE_DATA_DIR") or _data_home()) / "controlplane"


def _feature_store() -> StoreSettings:
    """The feature store the operators use: KUBEFORGE_FEAST_*, else the local runtime's, under its data directory."""
    from .featurestore.config import StoreSettings
    from .local.runtime import default_data_dir

    return StoreSettings.from_env(default_data_dir() / "features")


def _local_mlflow() -> str | None:
    """The local platform's MLflow, when `kubeforge up` started one."""
    from .local.runtime import LocalState, default_data_dir

    state = LocalState.read(default_data_dir())
    return state.mlflow_url if state.mlflow_port else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """kubeforge: train, register, serve and roll out models on Kubernetes."""
    ctx.obj = {usercommands.STORE: _feature_store, approvals.TRACKING_URI: _local_mlflow}


@main.command()
def version() -> None:
    """Print the kubeforge version."""
    click.echo(f"kubeforge {__version__}")


@main.group(invoke_without_command=True)
@click.pass_context
def crds(ctx: click.Context) -> None:
    """Print the CRDs as YAML (pipe into `kubectl apply -f -`), or apply/write them."""
    if ctx.invoked_subcommand is None:
        from .api import crdgen

        click.echo("---\n".join(crdgen.render(k) for k in crdgen.KINDS), nl=False)


@crds.command("write")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("crds"))
def crds_write(directory: Path) -> None:
    """Regenerate the CRD files in DIRECTORY (default: crds/)."""
    from .api import crdgen

    for path in crdgen.write(directory):
        click.echo(f"wrote {path}")


@crds.command("apply")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Defaults to $KUBECONFIG or ~/.kube/config.")
def crds_apply(kubeconfig: str | None) -> None:
    """Install or update the CRDs in the cluster (server-side apply)."""
    from .api import crdgen
    from .core import kube

    api = kube.api_client(kubeconfig)
    for kind in crdgen.KINDS:
        obj = crdgen.crd(kind)
        kube.apply(api, obj)
        click.echo(f"customresourcedefinition/{obj['metadata']['name']} applied")


@main.group()
def model() -> None:
    """Registered model versions: bring your own, approve or reject, cards and lineage."""


model.add_command(approvals.approve)
model.add_command(approvals.reject)
model.add_command(provenance.card)
main.add_command(provenance.lineage)


@main.group()
def monitoring() -> None:
    """kubeforge's alert rules and Grafana dashboards, generated as code."""


@monitoring.command("write")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def monitoring_write(root: Path) -> None:
    """Regenerate the rule files and dashboards in the repository at ROOT (default: the current directory)."""
    from .monitoring import rules

    try:
        from .monitoring import dashboards
    except ImportError as err:  # the SDK comes with the dev extra only
        raise click.ClickException(f"{err}: install the dev extra (pip install -e '.[dev]', `make install`)") from err
    for path, text in {**rules.rendered(), **dashboards.rendered()}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        click.echo(f"wrote {target}")


@main.group()
def controlplane() -> None:
    """A local Kubernetes API server + etcd on 127.0.0.1 (no kubelet: pods never run)."""


_cp_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_default_cp_dir,
    show_default="$KUBEFORGE_DATA_DIR/controlplane or ~/.local/share/kubeforge/controlplane",
    help="Where etcd data, certificates, logs and the kubeconfig live; kept across down/up.",
)


@controlplane.command("up")
@_cp_dir_option
@click.option("--no-build", is_flag=True, help="Fail instead of building kube-apiserver when it is missing.")
def controlplane_up(data_dir: Path, no_build: bool) -> None:
    """Start the control plane in the background and print how to use it."""
    from .local.binaries import BinaryNotFound
    from .local.controlplane import ControlPlane, status

    running, state = status(data_dir)
    if running and state:
        click.echo(f"already running: {state.server}")
    else:
        try:
            state = ControlPlane(data_dir, build=not no_build).start()
        except (BinaryNotFound, RuntimeError, TimeoutError) as err:
            raise click.ClickException(str(err)) from err
        click.echo(f"control plane ready: {state.server}")
    click.echo(f"kubeconfig: {state.kubeconfig}")
    click.echo(f"use it:     export KUBECONFIG={state.kubeconfig}")
    click.echo("then:       kubectl apply -f crds/ && kubectl apply -f crds/samples/")


@controlplane.command("down")
@_cp_dir_option
def controlplane_down(data_dir: Path) -> None:
    """Stop the control plane; its data stays in the data directory."""
    from .local.controlplane import ControlPlane, status

    running, state = status(data_dir)
    if state is None:
        click.echo("not running")
        return
    ControlPlane(data_dir).stop()
    click.echo("stopped" if running else "stopped (it had already exited)")


@controlplane.command("status")
@_cp_dir_option
def controlplane_status(data_dir: Path) -> None:
    """Say whether the control plane is running; exit 1 when it is not."""
    from .local.controlplane import status

    running, state = status(data_dir)
    if not running or state is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(f"running: {state.server} (apiserver pid {state.apiserver_pid}, etcd pid {state.etcd_pid})")
    click.echo(f"kubeconfig: {state.kubeconfig}")


@controlplane.command("build")
def controlplane_build() -> None:
    """Find kube-apiserver and etcd, building kube-apiserver once if it is missing."""
    from .local import binaries

    try:
        click.echo(f"kube-apiserver: {binaries.kube_apiserver(build=True)}")
        click.echo(f"etcd:           {binaries.etcd()}")
    except binaries.BinaryNotFound as err:
        raise click.ClickException(str(err)) from err


for command in (serving, features, up, down, status, local, feedback, dataset):
    main.add_command(command)
model.add_command(model_import)


@main.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple[str, ...]) -> None:
    """Train and register a model from a TrainingJob spec (what training pods run); --help for options."""
    from .training.main import main as train_main

    sys.exit(train_main(list(args)))


@main.command()
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local runtime data (default: as `up`)."
)
@click.option(
    "--examples",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("docs/examples"),
    show_default=True,
    help="The story's TrainingJobs and ModelDeployment (docs/examples of the kubeforge repository).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the summary (summary.md) and the plot (rollout.png) go.",
)
def demo(data_dir: Path | None, examples: Path, out: Path) -> None:
    """Train, serve, canary-promote v2 and roll back a broken v3, with live traffic; writes a summary and a plot."""
    import time

    from .local import runtime, supervisor
    from .local.demo import Demo, Stopped, why

    data_dir = data_dir or runtime.default_data_dir()
    began = time.time()
    try:
        Demo(data_dir, examples, out).run()
    except runtime.UpFailed as err:
        raise click.ClickException(str(err)) from err
    except Stopped as err:
        down = [name for name, running, _ in runtime.status(data_dir) if not running]
        again = supervisor.restarted_since(data_dir, began)
        said = [f"not running now: {', '.join(down)}"] if down else []
        said += [f"started again by the supervisor: {', '.join(again)}"] if again else []
        parts = "; ".join(said) or "every part of the local platform still runs"
        raise click.ClickException(
            f"the demo stopped: {why(err)}\n{parts} (`kubeforge status`; logs under {runtime.Layout(data_dir).logs}). "
            "`kubeforge demo` again starts the platform's missing parts and the story over."
        ) from err


@main.group()
def operator() -> None:
    """The kubeforge operators."""


@operator.command("run")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["trainingjob", "modeldeployment", "featureview"]),
    help="Only these kinds.",
)
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Only these namespaces (default: all).")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cluster to run against (default: $KUBECONFIG, ~/.kube/config, or in-cluster credentials).",
)
@click.option("--verbose", "-v", is_flag=True)
@click.option("--liveness", metavar="URL", help="Serve a health endpoint, e.g. http://0.0.0.0:8080/healthz.")
@click.option(
    "--metrics-address", metavar="HOST:PORT", help="Serve Prometheus metrics at /metrics, e.g. 0.0.0.0:9102 (off)."
)
def operator_run(
    kinds: tuple[str, ...],
    namespaces: tuple[str, ...],
    kubeconfig: Path | None,
    verbose: bool,
    liveness: str | None,
    metrics_address: str | None,
) -> None:
    """Run the operators against a cluster until stopped."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = str(kubeconfig)
    # The operators talk to the API server through kubeforge.core.kubeapi. kopf imports the Kubernetes client
    # package whenever it is installed, only to recognise the client's model objects, which the operators never
    # hand it; kept out of this process, that import's 25 MB are too (docs/benchmarks.md, Operator).
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # None in sys.modules blocks the import
    from .operators.run import run

    run(list(kinds) or None, list(namespaces) or None, verbose, liveness, metrics_address)


if __name__ == "__main__":
    main()

"""`kubeforge serving ...` commands: export a model version, run the gateway."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("serving")
def serving() -> None:
    """Triton model repositories and the inference gateway."""


@serving.command("export")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True, help="MLflow tracking server.")
@click.option("--model", "name", required=True, help="Registered model name.")
@click.option("--version", type=int, help="Registered version (or --alias).")
@click.option("--alias", help="Registry alias to resolve (or --version).")
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--runtime", "runtime_json", help="TritonRuntime as JSON (the ModelDeployment's spec.runtime).")
@click.option("--triton-name", help="Model name inside Triton (default: the registered name).")
def export_command(
    tracking_uri: str,
    name: str,
    version: int | None,
    alias: str | None,
    repository: Path,
    runtime_json: str | None,
    triton_name: str | None,
) -> None:
    """Write a registered model version into a Triton model repository."""
    from kubeforge.api.modeldeployment import ModelRef, TritonRuntime

    from .export import ExportError, export

    try:
        ref = ModelRef(name=name, version=version, alias=alias)
        runtime = TritonRuntime.model_validate_json(runtime_json) if runtime_json else TritonRuntime()
        out = export(tracking_uri, ref, repository, runtime, triton_name)
    except (ExportError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"exported {name} version {out.version} to {out.directory}")


@serving.command("gateway")
@click.option("--routes", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Route table file.")
@click.option("--tokens", type=click.Path(dir_okay=False, path_type=Path), help="Bearer token file; no auth without.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--grpc-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="OIP over gRPC; 0 for none."
)
@click.option("--max-body-bytes", type=int, default=16 * 1024 * 1024, show_default=True)
@click.option("--reload-interval", type=float, default=1.0, show_default=True, help="Seconds between file checks.")
@click.option(
    "--payload-log-dir",
    envvar="KUBEFORGE_PAYLOAD_LOG_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the payload logs of models whose route asks for one.",
)
@click.option(
    "--access-log",
    envvar="KUBEFORGE_ACCESS_LOG",
    default="-",
    show_default=True,
    help="Where the access log (a JSON line per model request) goes: - for stdout, a file path, or off.",
)
@click.option("--access-log-max-mb", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--access-log-max-files", type=click.IntRange(1, 1000), default=5, show_default=True)
def gateway_command(
    routes: Path,
    tokens: Path | None,
    host: str,
    port: int,
    grpc_port: int,
    max_body_bytes: int,
    reload_interval: float,
    payload_log_dir: Path | None,
    access_log: str,
    access_log_max_mb: int,
    access_log_max_files: int,
) -> None:
    """Serve the Open Inference Protocol in front of Triton, routed by the route table."""
    from .gateway import Settings, serve

    settings = Settings(
        routes,
        tokens,
        max_body_bytes,
        reload_interval,
        payload_dir=payload_log_dir,
        access_log=None if access_log == "off" else access_log,
        access_log_max_mb=access_log_max_mb,
        access_log_max_files=access_log_max_files,
        grpc_host=host,
        grpc_port=grpc_port,
    )
    serve(settings, host, port)

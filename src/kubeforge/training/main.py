"""Entry point of the trainer container: ``kubeforge train --spec FILE [--featureview FILE]``.

The operator mounts the TrainingJob (or just its spec) from a ConfigMap and passes the
MLflow tracking URI; the TrainingJob's identity comes from flags or from the env vars
below (set by the operator through the downward API) and ends up in the lineage tags.
A TrainingJob whose dataset is a FeatureView also gets the FeatureView (spec and
generation, read by the operator: the pod has no Kubernetes credentials) in the same
ConfigMap, and the feature store's settings as ``KUBEFORGE_FEAST_*`` env vars.

On success the last stdout line is ``{"kubeforge.result": {...}}`` (run id, model
version and URI, final metrics) for the operator to read. On failure the exit status is
1, stderr carries one ``error:`` line per problem, and the same lines go to the file
named by ``KUBEFORGE_TERMINATION_LOG`` (e.g. /dev/termination-log), which Kubernetes
shows as the container's termination message. Several replicas: see
:mod:`kubeforge.training.distributed` for the torchrun environment contract.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kubeforge.api import FeatureView, InvalidResource, TrainingJob, parse
from kubeforge.api.meta import API_VERSION

from .errors import TrainerError
from .job import Settings, run
from .registration import Identity

# Kubernetes keeps at most this many bytes of a termination message.
_TERMINATION_LOG_LIMIT = 4096


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="kubeforge train", description="Run a TrainingJob's trainer.")
    parser.add_argument("--spec", required=True, type=Path, help="TrainingJob (or its spec) as YAML or JSON")
    parser.add_argument(
        "--featureview", type=Path, help="the FeatureView spec.dataset.featureView names, as YAML or JSON"
    )
    parser.add_argument("--tracking-uri", default=env("MLFLOW_TRACKING_URI"), help="default: $MLFLOW_TRACKING_URI")
    parser.add_argument("--experiment", default=env("MLFLOW_EXPERIMENT_NAME"), help="default: spec.model.name")
    parser.add_argument("--namespace", default=env("KUBEFORGE_TRAININGJOB_NAMESPACE"), help="TrainingJob namespace")
    parser.add_argument("--name", default=env("KUBEFORGE_TRAININGJOB_NAME"), help="TrainingJob name")
    parser.add_argument("--uid", default=env("KUBEFORGE_TRAININGJOB_UID"), help="TrainingJob uid")
    return parser


def _read_mapping(path: Path, flag: str, what: str) -> dict[str, Any]:
    try:
        obj = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TrainerError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TrainerError(f"{flag}: {path} is not valid YAML or JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TrainerError(f"{flag}: {path} must hold {what} (a mapping)")
    return obj


def read_trainingjob(path: Path) -> TrainingJob:
    """The TrainingJob in path; a bare spec is accepted too, so errors still read spec.<field>."""
    obj = _read_mapping(path, "--spec", "a TrainingJob or a TrainingJob spec")
    if "kind" not in obj:
        obj = {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {}, "spec": obj}
    job = parse(obj)
    if not isinstance(job, TrainingJob):
        raise TrainerError(f"--spec: {path} holds a {job.kind}, not a TrainingJob")
    return job


def read_featureview(path: Path) -> FeatureView:
    """The FeatureView in path, with its metadata: the name and generation go into the lineage tags."""
    try:
        view = parse(_read_mapping(path, "--featureview", "a FeatureView"))
    except InvalidResource as exc:
        raise TrainerError(f"--featureview: {path}: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)) from None
    if not isinstance(view, FeatureView):
        raise TrainerError(f"--featureview: {path} holds a {view.kind}, not a FeatureView")
    return view


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)
    if log := os.environ.get("KUBEFORGE_TERMINATION_LOG"):
        message = "\n".join(lines).encode()[:_TERMINATION_LOG_LIMIT]
        try:
            Path(log).write_bytes(message)
        except OSError as exc:
            print(f"error: cannot write the termination message to {log}: {exc.strerror}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; the process exit status."""
    args = _parser().parse_args(argv)
    try:
        job = read_trainingjob(args.spec)
        view = read_featureview(args.featureview) if args.featureview else None
        if not args.tracking_uri:
            raise TrainerError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
        meta = job.metadata
        identity = Identity(
            namespace=args.namespace or meta.namespace or "",
            name=args.name or meta.name or "",
            uid=args.uid or meta.uid or "",
        )
        attempt = int(os.environ.get("KUBEFORGE_ATTEMPT") or 1)
        settings = Settings(
            args.tracking_uri, args.experiment, identity, view, annotations=meta.annotations, attempt=attempt
        )
        result = run(job.spec, settings)
    except InvalidResource as exc:
        return _fail([f"{field}: {message}" for field, message in exc.errors])
    except TrainerError as exc:
        return _fail([str(exc)])
    except Exception as exc:
        traceback.print_exc()
        return _fail([f"{type(exc).__name__}: {exc}"])
    if result is not None:
        print(json.dumps({"kubeforge.result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

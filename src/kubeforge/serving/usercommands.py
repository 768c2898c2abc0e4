"""`kubeforge feedback` and `kubeforge dataset from-feedback`: labels to a deployment's gateway, training data back.

The gateway is the one serving the ModelDeployment: ``--url``, else the address in the
deployment's ``status.url`` read from the API server (``--kubeconfig`` or ``$KUBECONFIG``,
``-n``). A gateway with bearer tokens takes ``--token`` (or ``$KUBEFORGE_TOKEN``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ..core import feedbackset, plainhttp
from ..featurestore.usercommands import _api_errors, _client, _namespace

BATCH = 1000
"""Labels per POST (the gateway takes up to 10000)."""

_url_option = click.option("--url", help="The gateway's address (default: the ModelDeployment's status.url).")
_model_option = click.option("--model", required=True, help="The ModelDeployment (the model name at the gateway).")
_kubeconfig_option = click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), help="Defaults to $KUBECONFIG or ~/.kube/config."
)
_namespace_option = click.option("-n", "--namespace", help="Namespace of the ModelDeployment.")
_token_option = click.option("--token", envvar="KUBEFORGE_TOKEN", help="Bearer token, when the gateway asks for one.")


def gateway_url(model: str, url: str | None, kubeconfig: str | None, namespace: str | None) -> str:
    """The gateway's base address: --url (a model URL such as status.url is cut back to it), else status.url."""
    if url is None:
        from ..api import API_VERSION
        from ..core import kube

        with _api_errors(kubeconfig):
            ns = _namespace(kubeconfig, namespace)
            body = kube.get(_client(kubeconfig), API_VERSION, "ModelDeployment", model, ns)
        if body is None:
            raise click.ClickException(f"ModelDeployment {model!r} not found in namespace {ns!r}: pass -n or --url")
        url = (body.get("status") or {}).get("url")
        if not url:
            raise click.ClickException(
                f"ModelDeployment {model!r} has no status.url yet (it is not serving): wait for Ready, or pass --url"
            )
    return re.sub(r"/v2(/.*)?$", "", url.rstrip("/"))


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _refused(resp: plainhttp.Response) -> str:
    try:
        return str(resp.json().get("error") or resp.text)
    except ValueError:
        return resp.text


def _by_line(message: str, file: Path, lines: list[int]) -> str:
    """The gateway's message with labels[i] of a batch named as the line of the file it came from."""
    match = re.search(r"labels\[(\d+)\](\.?)", message)
    if match is None or int(match[1]) >= len(lines):
        return message
    where = f"{file} line {lines[int(match[1])]}" + (": " if match[2] else "")
    return message[: match.start()] + where + message[match.end() :]


def read_labels(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, {"id", "label"}) of every non-empty line; ClickException naming the first bad line."""
    items = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                usage = 'each line is {"id": ..., "label": ...}'
                raise click.ClickException(f"{path} line {number}: not JSON; {usage}") from None
            if not isinstance(item, dict) or "id" not in item or "label" not in item:
                raise click.ClickException(f'{path} line {number}: needs "id" (the request id) and "label"')
            items.append((number, {"id": item["id"], "label": item["label"]}))
    return items


@click.command("feedback")
@_model_option
@_url_option
@_kubeconfig_option
@_namespace_option
@_token_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def feedback(
    model: str, url: str | None, kubeconfig: str | None, namespace: str | None, token: str | None, file: Path
) -> None:
    """Send the labels in FILE (JSON lines {"id", "label"}: the kubeforge-request-id of an answer and its true
    class or value) to the model's gateway, in batches; prints how many joined an answer."""
    items = read_labels(file)
    base = gateway_url(model, url, kubeconfig, namespace)
    totals = {"joined": 0, "unknown": 0, "expired": 0}
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        body = {"labels": [item for _, item in batch]}
        try:
            resp = plainhttp.post(f"{base}/v2/models/{model}/feedback", body, 60, _headers(token))
        except plainhttp.HttpError as err:
            raise click.ClickException(f"cannot reach the gateway at {base}: {err}") from None
        if resp.status != 200:
            message = _by_line(_refused(resp), file, [number for number, _ in batch])
            applied = f" (lines before {batch[0][0]} were applied)" if start else " (nothing was applied)"
            raise click.ClickException(f"the gateway refused: {message}{applied}")
        for key, value in resp.json().items():
            totals[key] = totals.get(key, 0) + int(value)
    click.echo(f"joined {totals['joined']}, unknown {totals['unknown']}, expired {totals['expired']}")


@click.group("dataset")
def dataset() -> None:
    """Training data sets from what the platform recorded."""


@dataset.command("from-feedback")
@_model_option
@click.option("--since", default="24h", show_default=True, help="How far back answered requests are taken.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="FILE.csv or .parquet")
@click.option("--target", default="label", show_default=True, help="Name of the label column.")
@click.option(
    "--features",
    help="Feature columns, comma-separated (default: the stable version's); rows of versions without one are left out.",
)
@_url_option
@_kubeconfig_option
@_namespace_option
@_token_option
def from_feedback(
    model: str,
    since: str,
    out: Path,
    target: str,
    features: str | None,
    url: str | None,
    kubeconfig: str | None,
    namespace: str | None,
    token: str | None,
) -> None:
    """Write the model's labelled requests (payload log joined with fed-back labels) to --out: one column per
    feature, the label and event_timestamp."""
    if out.suffix not in (".csv", ".parquet"):
        raise click.ClickException(f"--out {out}: name a .csv or .parquet file")
    base = gateway_url(model, url, kubeconfig, namespace)
    try:
        resp = plainhttp.get(
            base + feedbackset.path(model),
            {"since": since, "target": target, **({"features": features} if features else {})},
            feedbackset.READ_TIMEOUT_S,
            _headers(token),
        )
    except plainhttp.HttpError as err:
        raise click.ClickException(f"cannot reach the gateway at {base}: {err}") from None
    if resp.status != 200:
        raise click.ClickException(f"the gateway refused: {_refused(resp)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        out.write_bytes(resp.content)
        rows = max(resp.text.count("\n") - 1, 0)
    else:
        import io

        import pandas as pd

        frame = pd.read_csv(io.StringIO(resp.text))
        frame.to_parquet(out, index=False)
        rows = len(frame)
    click.echo(f"wrote {rows} labelled rows to {out}")
    if left_out := feedbackset.rows_left_out(resp.headers.get(feedbackset.ROWS_LEFT_OUT_HEADER)):
        click.echo(
            f"left out {left_out} labelled rows answered by versions without one of its features "
            f"({'--features' if features else 'the stable version'}'s)"
        )

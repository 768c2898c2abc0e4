"""The payload log: sampled requests and their answers as JSON lines, for debugging and for joining labels later.

A ModelDeployment with ``spec.monitoring.payloadLog`` has its gateway record ``samplePercent`` of
the requests a version answered, one JSON object per line::

    {"requestId": ..., "time": ..., "model": ..., "version": ..., "role": ...,
     "inputs": {name: values}, "outputs": {name: values}, "latencyMs": ...}

``requestId`` is what the caller got in the ``kubeforge-request-id`` header (its own OIP ``id``
when it sent one): the key labels that arrive later join on. ``inputs`` are the caller's, plus
the model's ``features`` when the gateway read them from the online store. An input named in
``redact`` is written as ``"[redacted]"``: its values are never decoded into a record. Request
headers are not recorded, so no bearer token reaches the log.

Labels fed back for a model with a payload log (:mod:`.feedback`) go to ``<dir>/<model>.labels.jsonl``,
one ``{"requestId", "time", "label"}`` per line, rotated alike.

Each model writes ``<dir>/<model>.jsonl``, rotated at ``maxFileMb`` to ``.1`` (``.1`` to
``.2``, ...), ``maxFiles`` rotated files kept: disk use stays below ``(maxFiles + 1) *
maxFileMb`` per model whatever the traffic. Beside it, ``<dir>/<model>.features.json`` keeps the
names of each recorded version's input features (``{version: [name, ...]}``): a data set built
from the records names its columns also for versions the route no longer has (a canary rolled
back, a stable version retired), and after a restart.

The request path only samples and queues references to bytes it already holds. The queue is
bounded (a full queue drops the record and counts it); a writer task hands batches to a thread
of its own that decodes, encodes and writes them, so neither JSON encoding nor a slow disk holds
up a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from kubeforge.api.modeldeployment import PayloadLog
from kubeforge.core.files import replace_whole

from .metrics import PAYLOAD_RECORDS
from .oip import Body, tensors
from .routes import Route, Target

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
QUEUE = 4096
"""Sampled requests waiting for the writer at most; a burst beyond that is dropped and counted."""
BATCH = 256
"""Records the writer encodes and writes per hand-over to its thread."""
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled request, as the request path hands it over: references, nothing decoded yet."""

    settings: PayloadLog
    model: str
    version: str
    role: str
    request_id: str
    time: float
    latency: float
    request: Body
    """The caller's request (inflated when it came compressed)."""
    rebuilt: Body | None
    """The request the version received, when the gateway built it from the online store."""
    answer: Body
    features: tuple[str, ...] | None = None
    """The version's input features in order, where the route names them."""


def features_path(directory: Path, model: str) -> Path:
    return directory / f"{model}.features.json"


def logged_features(directory: Path, model: str) -> dict[str, list[str]]:
    """The input feature names of each version whose requests model's payload log recorded (empty before any)."""
    try:
        found = json.loads(features_path(directory, model).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): [str(n) for n in v] for k, v in found.items() if isinstance(v, list)}


class Rotation(Protocol):
    """How a log file rotates: at max_file_mb, with max_files rotated files kept."""

    @property
    def max_file_mb(self) -> int: ...

    @property
    def max_files(self) -> int: ...


class RotatingFile:
    """A log file, appended to and rotated by size (renamed to .1, .1 to .2, ...): log shippers that tail files
    follow such renames, and disk use stays below (max_files + 1) * max_file_mb."""

    def __init__(self, path: Path):
        self.path = path
        self.handle: BinaryIO | None = None
        self.size = 0

    def write(self, line: bytes, settings: Rotation) -> None:
        if self.handle is None:
            self.handle = self.path.open("ab")
            self.size = self.handle.tell()
        if self.size and self.size + len(line) > settings.max_file_mb * MIB:
            self._rotate(settings.max_files)
        assert self.handle is not None
        self.handle.write(line)
        self.size += len(line)

    def _rotate(self, keep: int) -> None:
        assert self.handle is not None
        self.handle.close()
        for old in self.path.parent.glob(f"{self.path.name}.*"):
            suffix = old.name.rsplit(".", 1)[1]
            if suffix.isdigit() and int(suffix) >= keep:
                old.unlink()  # beyond what is kept, also after maxFiles went down
        for n in range(keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self.handle = self.path.open("ab")
        self.size = 0

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class PayloadLogger:
    """Samples answered requests of the models that ask for it and writes them under directory."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(QUEUE)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="payload-log")
        self.files: dict[str, RotatingFile] = {}
        self.label_files: dict[str, RotatingFile] = {}
        self.features: dict[str, dict[str, list[str]]] = {}  # by model: what its features file holds
        self._reported: set[str] = set()

    def offer(
        self,
        route: Route,
        target: Target,
        request_id: str,
        start: float,
        request: Body,
        rebuilt: Body | None,
        answer: Body,
    ) -> None:
        """Queue the request when it falls in its model's sample; a coin toss and a queue put."""
        settings = route.spec.payload_log
        if settings is None or random.random() * 100 >= settings.sample_percent:
            return
        if self.directory is None:
            message = f"model {route.name} asks for a payload log, but the gateway has no --payload-log-dir"
            self._report_once(route.name, message + ": nothing is recorded")
            return
        latency = time.perf_counter() - start
        when = time.time() - latency
        labels = (target.model, target.version, target.role)
        sample = Sample(settings, *labels, request_id, when, latency, request, rebuilt, answer, target.features)
        try:
            self.queue.put_nowait(sample)
        except asyncio.QueueFull:
            PAYLOAD_RECORDS.labels(route.name, "dropped").inc()

    async def run(self) -> None:
        """Hand what is queued to the writer thread, a batch at a time."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await loop.run_in_executor(self.thread, self._write, batch)

    def close(self) -> None:
        """Write what is still queued, then close the files."""
        batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            self.thread.submit(self._write, batch).result()
        self.thread.shutdown()
        for file in [*self.files.values(), *self.label_files.values()]:
            file.close()

    async def labels(self, model: str, settings: PayloadLog, records: list[dict[str, Any]]) -> None:
        """Append joined labels to <model>.labels.jsonl in the writer's thread; done when they are written."""
        if self.directory is None or not records:
            return
        await asyncio.get_running_loop().run_in_executor(self.thread, self._write_labels, model, settings, records)

    def _write_labels(self, model: str, settings: PayloadLog, records: list[dict[str, Any]]) -> None:
        assert self.directory is not None
        file = self.label_files.get(model)
        if file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            file = self.label_files[model] = RotatingFile(self.directory / f"{model}.labels.jsonl")
        for item in records:
            file.write(json.dumps(item).encode() + b"\n", settings)
        file.flush()

    def _write(self, batch: list[Sample]) -> None:
        assert self.directory is not None
        written: set[RotatingFile] = set()
        for sample in batch:
            model = sample.model
            try:
                line = self.line(sample)
                file = self.files.get(model)
                if file is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    file = self.files[model] = RotatingFile(self.directory / f"{model}.jsonl")
                file.write(line, sample.settings)
                written.add(file)
            except Exception as err:  # one bad record must not stop the log
                PAYLOAD_RECORDS.labels(model, "failed").inc()
                self._report_once(type(err).__name__, f"payload record of model {model} not written: {err!r}")
            else:
                PAYLOAD_RECORDS.labels(model, "written").inc()
                self._note_features(sample)
        for file in written:
            file.flush()

    def _note_features(self, sample: Sample) -> None:
        """Keep the sample's version's feature names in its model's features file, written anew (atomically) only
        when a version's names are new: once per version, not per record."""
        assert self.directory is not None
        if sample.features is None:
            return
        known = self.features.get(sample.model)
        if known is None:
            known = self.features[sample.model] = logged_features(self.directory, sample.model)
        names = list(sample.features)
        if known.get(sample.version) == names:
            return
        updated = {**known, sample.version: names}
        path = features_path(self.directory, sample.model)
        try:
            replace_whole(path, json.dumps(updated))
        except OSError as err:  # the record is written; its version's names are tried again with its next one
            self._report_once("features", f"feature names of model {sample.model} not written: {err!r}")
            return
        self.features[sample.model] = updated

    @staticmethod
    def line(sample: Sample) -> bytes:
        """The sample's record as one line of JSON."""
        return json.dumps(record(sample), default=_text).encode() + b"\n"

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.error("%s", message)


def record(sample: Sample) -> dict[str, Any]:
    """The JSON object of one sample; redacted inputs are named, never decoded."""
    redact = set(sample.settings.redact)

    def wanted(name: str) -> bool:
        return name not in redact

    inputs: dict[str, Any] = {}
    for body in (sample.request, sample.rebuilt):
        if body is not None:
            header = json.loads(body[0][: body[1]] if body[1] else body[0])
            inputs.update(dict.fromkeys((i["name"] for i in header["inputs"] if i["name"] in redact), REDACTED))
            inputs.update({k: v.tolist() for k, v in tensors(*body, "inputs", wanted).items()})
    outputs = {k: v.tolist() for k, v in tensors(*sample.answer).items()}
    return {
        "requestId": sample.request_id,
        "time": datetime.fromtimestamp(sample.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": sample.model,
        "version": sample.version,
        "role": sample.role,
        "inputs": inputs,
        "outputs": outputs,
        "latencyMs": round(sample.latency * 1000, 3),
    }


def _text(value: object) -> str:
    """BYTES elements from binary tensor data, for JSON: text where it is UTF-8, escapes where not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

"""The gateway's access log: one JSON object per line for each request to a model, for audit and log shippers::

    {"time": "2025-01-31T12:00:00.123Z", "request_id": "...", "identity": "acme-web", "tenant": "acme",
     "priority": "interactive", "method": "POST", "path": "/v2/models/clf/infer", "model": "clf", "version": "3",
     "role": "stable", "status": 200, "latency_ms": 1.234, "bytes": 180, "request_bytes": 120, "throttled": null}

``time`` is when the request arrived (RFC 3339, UTC, milliseconds); ``identity`` is the token's name from the token
file, never the token (null: no token file, or a token the gateway does not know); ``version`` and ``role``
(stable, canary, shadow never, fallback's stable) are the ones that answered, null for requests no version
answered (401, 404, 429); ``bytes`` is the response body, ``request_bytes`` what was read of the request's;
``throttled`` is the limit of a 429 (rate, concurrency, overload). Health checks and /metrics are not logged.

It goes to stdout by default, which is what a cluster's log collectors read (the kubelet rotates it), kept apart
from the gateway's own messages on stderr; or to a file rotated by size, for a sidecar shipper that tails it. Size
rotation rather than reopening on SIGHUP: a pod has no logrotate to send the signal, and a size bound keeps an
emptyDir from filling whatever the traffic. Tailing shippers (Fluent Bit, Vector, Filebeat) follow the renames.

The request path appends a tuple to a list; a task hands the list to a thread of its own every 100 ms, which
encodes the lines and writes them in one go. If that thread falls behind by ``MAX_PENDING`` lines, further lines
are dropped and counted rather than held in memory; a gateway killed outright loses the last 100 ms.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path

from .auth import Caller
from .metrics import ACCESS_LOG_LINES
from .payloads import RotatingFile

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
MAX_PENDING = 100_000
"""Lines waiting for the writer at most (about 30 MB); beyond that lines are dropped and counted."""
STDOUT = "-"


_second: tuple[int, str] = (-1, "")


def rfc3339(wall: float) -> str:
    """Unix time as RFC 3339 in UTC with milliseconds: 2025-01-31T12:00:00.123Z. The formatted second is kept for
    the next line, which is mostly in the same second."""
    global _second
    millis = int(wall * 1000)
    second, text = _second
    if millis // 1000 != second:
        second, text = millis // 1000, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
        _second = (second, text)
    return f"{text}.{millis % 1000:03d}Z"


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


Entry = tuple[float, str | None, Caller, str, str, str | None, str | None, str | None, int, float, int, int, str | None]
"""What the request path hands over: time, request id, caller, method, path, model, version, role, status,
latency in seconds, bytes sent, bytes received, throttling reason."""


def line(entry: Entry) -> bytes:
    """One entry as a line of JSON, written out field by field (json.dumps of a dict costs several times more);
    every string goes through JSON's own escaping, so what a caller put in its request id or path stays one line."""
    wall, request_id, caller, method, path, model, version, role, status, latency, sent, received, throttled = entry
    return (
        f'{{"time":"{rfc3339(wall)}","request_id":{_text(request_id)},"identity":{_text(caller.identity)},'
        f'"tenant":{_text(caller.tenant)},"priority":{_text(caller.priority)},"method":{_text(method)},'
        f'"path":{_text(path)},"model":{_text(model)},"version":{_text(version)},"role":{_text(role)},'
        f'"status":{int(status)},"latency_ms":{round(latency * 1000, 3)!r},"bytes":{int(sent)},'
        f'"request_bytes":{int(received)},"throttled":{_text(throttled)}}}\n'
    ).encode()


class AccessLog:
    """Buffers entries on the request path; writes them to stdout or a size-rotated file from a thread."""

    def __init__(self, target: str | None, max_file_mb: int = 100, max_files: int = 5):
        self.enabled = target is not None
        self.max_file_mb = max_file_mb
        self.max_files = max_files
        self.file = RotatingFile(Path(target)) if target is not None and target != STDOUT else None
        self.pending: list[Entry] = []
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="access-log")
        self._failed = False

    def record(self, entry: Entry) -> None:
        """Queue one request's entry; a list append."""
        if len(self.pending) < MAX_PENDING:
            self.pending.append(entry)
        else:
            ACCESS_LOG_LINES.labels("dropped").inc()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            if self.pending:
                batch, self.pending = self.pending, []
                await loop.run_in_executor(self.thread, self._write, batch)

    def close(self) -> None:
        """Write what is still pending, then close the file."""
        batch, self.pending = self.pending, []
        if batch:
            self.thread.submit(self._write, batch).result()
        self.thread.shutdown()
        if self.file is not None:
            self.file.close()

    def _write(self, batch: list[Entry]) -> None:
        try:
            lines = [line(entry) for entry in batch]
            if self.file is None:
                sys.stdout.buffer.write(b"".join(lines))
                sys.stdout.buffer.flush()
            else:
                if self.file.handle is None and self.file.path.parent:
                    self.file.path.parent.mkdir(parents=True, exist_ok=True)
                for one in lines:
                    self.file.write(one, self)
                self.file.flush()
        except Exception as err:  # a full disk or a closed stdout must not stop the gateway
            ACCESS_LOG_LINES.labels("failed").inc(len(batch))
            if not self._failed:
                self._failed = True
                log.error("access log lines not written (counted from now on): %r", err)
        else:
            ACCESS_LOG_LINES.labels("written").inc(len(batch))

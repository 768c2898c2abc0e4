"""The runner's health URL, as a kubelet's ``/healthz``: it answers 200 while the runner's loop goes round.

A runner that hangs (a deadlock, SIGSTOP) still runs, so the supervisor cannot tell it from a busy one by its process;
it asks this URL, which a thread of its own serves, and stops a runner whose loop has not come round for ``STALE``
seconds. A loop whose passes fail (an API server that is starting again) still comes round, so it counts as well.
"""

from __future__ import annotations

import http.server
import threading
import time

STALE = 60.0


class Health:
    """When the loop last came round, and the server that says whether that is recent enough."""

    def __init__(self) -> None:
        self.beat = time.monotonic()

    def serve(self, host: str, port: int) -> http.server.ThreadingHTTPServer:
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                since = time.monotonic() - health.beat
                if self.path != "/healthz":
                    code, body = 404, b"not found: the health URL is /healthz\n"
                elif since <= STALE:
                    code, body = 200, b"ok\n"
                else:
                    code, body = 503, f"the runner's loop has not come round for {since:.0f} s\n".encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # probes every few seconds: not worth a log line each
                pass

        server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        return server

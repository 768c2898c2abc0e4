"""The operator's plain HTTP requests: statuses are answers, an unreachable server is an HttpError."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubeforge.core import plainhttp
from kubeforge.local.processes import free_port


class Echo(BaseHTTPRequestHandler):
    """Answers with what it was sent; /missing with a 404 and a JSON error, as MLflow does; /moved with a redirect
    to a port where nothing listens."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = {
            "method": self.command,
            "path": self.path,
            "auth": self.headers.get("authorization"),
            "type": self.headers.get("content-type"),
            "body": json.loads(self.rfile.read(length)) if length else None,
        }
        status = 404 if self.path.startswith("/missing") else 302 if self.path.startswith("/moved") else 200
        data = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST"} if status == 404 else sent).encode()
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_get_sends_params_and_headers(server: str) -> None:
    resp = plainhttp.get(f"{server}/api", {"query": 'rate(x{v="2"}[1m])'}, headers={"authorization": "Bearer t"})
    assert resp.status == 200
    assert resp.json() == {
        "method": "GET",
        "path": "/api?query=rate%28x%7Bv%3D%222%22%7D%5B1m%5D%29",
        "auth": "Bearer t",
        "type": None,
        "body": None,
    }


def test_post_sends_json(server: str) -> None:
    sent = plainhttp.post(f"{server}/feedback", {"labels": [{"id": "a", "label": 1}]}).json()
    assert (sent["type"], sent["body"]) == ("application/json", {"labels": [{"id": "a", "label": 1}]})


def test_an_error_status_is_an_answer_with_its_body(server: str) -> None:
    resp = plainhttp.get(f"{server}/missing")
    assert resp.status == 404
    assert resp.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_a_redirect_is_an_answer_not_followed(server: str) -> None:
    resp = plainhttp.get(f"{server}/moved", headers={"authorization": "Bearer t"})
    assert resp.status == 302
    assert resp.json()["auth"] == "Bearer t"  # the body the server sent; nothing went to the redirect's target


def test_an_unreachable_server_raises_naming_the_request() -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/models/m/ready"
    with pytest.raises(plainhttp.HttpError, match=rf"GET {url}: .*refused"):
        plainhttp.get(url, timeout=2)

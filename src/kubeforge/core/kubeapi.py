"""A small Kubernetes API connection that speaks plain JSON, for the operators.

The Kubernetes client package costs an operator about 25 MB of memory for its generated models
(imported whole, on first use of any part of it) and, per request, more CPU than the API server's
answer takes to read: it re-reads its kubeconfig credentials, looks up proxy settings in the
environment and walks every request body to serialise it. The operators only ever send JSON to
paths they know, so this connection does just that: one keep-alive HTTPS connection per thread,
credentials loaded once (a service account token is read again when the file changes, as the
kubelet rotates it), and discovery of each kind's path cached per connection. The HTTP/1.1 exchange
is written here too (:class:`_Connection`): http.client checks every header it sends and parses
every answer's headers through the email package, which cost about as much client CPU per request
as everything else a request does (docs/benchmarks.md, Operator, rounds seventeen and eighteen).

Credentials come from a kubeconfig (its current context: token or token file, client certificate,
basic auth; certificate authority as file or data) or from the pod's service account, as
``kubeforge.core.kube.api_client`` finds them. Exec and auth-provider plugins are refused with a
message that says so: kopf's own login, which the operators use for their watches, does not run
them either.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """The API server answered with an error status; body is its Status object as text."""

    def __init__(self, status: int, reason: str, body: str):
        super().__init__(f"({status}) {reason}: {body[:500]}")
        self.status, self.reason, self.body = status, reason, body


class CredentialsError(Exception):
    """No usable credentials: the message names the kubeconfig or service account and what is missing."""


@dataclass(frozen=True)
class _Resource:
    plural: str
    namespaced: bool


class KubeApi:
    """A connection to one API server; safe to share between threads (each has its own HTTP connection)."""

    def __init__(self, server: str, tls: ssl.SSLContext | None, headers: dict[str, str], token_file: Path | None):
        parts = urlsplit(server)
        self.server = server.rstrip("/")
        self._host, self._port, self._tls = parts.hostname or "", parts.port, tls if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._headers = _checked({"Accept": "application/json", **headers}, "the kubeconfig's credentials")
        self._token_file, self._token_mtime = token_file, 0.0
        self._local = threading.local()
        self._resources: dict[tuple[str, str], _Resource] = {}
        self._preferred: dict[str, str] = {}

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(cls, paths: str | Path) -> KubeApi:
        """The current context of a kubeconfig; several files separated by ':' merge as kubectl merges them."""
        config: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
        bases: dict[str, Path] = {}
        for path in [Path(p).expanduser() for p in str(paths).split(os.pathsep) if p]:
            if not path.is_file():
                continue
            loaded = yaml.safe_load(path.read_text()) or {}
            config.setdefault("current-context", loaded.get("current-context"))
            for section in ("clusters", "users", "contexts"):
                for entry in loaded.get(section) or []:
                    config[section].append(entry)
                    bases.setdefault(f"{section}/{entry.get('name')}", path.parent)
        current = config.get("current-context")
        if not current:
            raise CredentialsError(f"kubeconfig {paths} has no current-context: kubectl config use-context NAME")

        def named(section: str, name: str) -> tuple[dict[str, Any], Path]:
            entry = next((e for e in config[section] if e.get("name") == name), None)
            if entry is None:
                raise CredentialsError(f"kubeconfig {paths}: {section[:-1]} {name!r} is not defined")
            return entry.get(section[:-1]) or {}, bases[f"{section}/{name}"]

        context, _ = named("contexts", current)
        cluster, cluster_dir = named("clusters", context.get("cluster", ""))
        user, user_dir = named("users", context.get("user", "")) if context.get("user") else ({}, Path("."))
        if "exec" in user or "auth-provider" in user:
            raise CredentialsError(
                f"kubeconfig {paths}: user {context.get('user')!r} uses an exec or auth-provider plugin, which the "
                "operator does not run: use a token or a client certificate (a service account's token, for instance)"
            )
        tls = _tls(
            _file_or_data(cluster, "certificate-authority", cluster_dir),
            _file_or_data(user, "client-certificate", user_dir),
            _file_or_data(user, "client-key", user_dir),
            bool(cluster.get("insecure-skip-tls-verify")),
        )
        headers, token_file = {}, None
        if user.get("token"):
            headers["Authorization"] = f"Bearer {user['token']}"
        elif user.get("tokenFile"):
            token_file = user_dir / user["tokenFile"]
        elif user.get("username"):
            pair = f"{user['username']}:{user.get('password', '')}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        return cls(cluster["server"], tls, headers, token_file)

    @classmethod
    def in_cluster(cls) -> KubeApi:
        """The pod's service account, as every in-cluster client finds it."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SERVICE_ACCOUNT / "token").is_file():
            raise CredentialsError(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod with a service account: pass a kubeconfig"
            )
        tls = _tls((SERVICE_ACCOUNT / "ca.crt").read_bytes(), None, None, False)
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return cls(server, tls, {}, SERVICE_ACCOUNT / "token")

    # -- requests -----------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the answer as parsed JSON. An error status raises ApiError."""
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        self._read_token()
        headers = {**self._headers, "Accept": accept}
        if data is not None:
            headers["Content-Type"] = content_type
        status, reason, text = self._exchange(method, target, data, headers)
        if not 200 <= status <= 299:
            raise ApiError(status, reason, text.decode(errors="replace"))
        return json.loads(text) if text else {}

    def path(self, api_version: str, kind: str, name: str | None, namespace: str | None) -> str:
        """The path of an object (or with name None, of its collection), found by discovery.

        api_version may be a bare group ("discovery.k8s.io"): the server's preferred version is used.
        """
        if "/" not in api_version and "." in api_version:
            api_version = self._preferred_version(api_version)
        res = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if res.namespaced:
            base += f"/namespaces/{quote(namespace or 'default')}"
        return f"{base}/{res.plural}" + (f"/{quote(name)}" if name else "")

    # -- internals ----------------------------------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> _Resource:
        key = (api_version, kind)
        if key not in self._resources:
            listed = self.request("GET", f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}")
            for item in listed.get("resources") or []:
                if "/" not in item["name"]:
                    self._resources[(api_version, item["kind"])] = _Resource(item["name"], item["namespaced"])
            if key not in self._resources:
                raise LookupError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    def _preferred_version(self, group: str) -> str:
        if group not in self._preferred:
            self._preferred[group] = self.request("GET", f"/apis/{group}")["preferredVersion"]["groupVersion"]
        return self._preferred[group]

    def _read_token(self) -> None:
        """A token file is read again whenever it changes (the kubelet rotates service account tokens)."""
        if self._token_file is None:
            return
        mtime = self._token_file.stat().st_mtime
        if mtime != self._token_mtime:
            token = {"Authorization": f"Bearer {self._token_file.read_text().strip()}"}
            self._headers |= _checked(token, str(self._token_file))
            self._token_mtime = mtime

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        """Send on this thread's kept-alive connection; a connection the server closed while idle is
        opened again and the request sent once more (the server never read it)."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        fresh = conn is None
        while True:
            if conn is None:
                conn = self._local.conn = _Connection(self._host, self._port, self._tls)
            try:
                status, reason, body, keep = conn.exchange(method, target, data, headers)
            except (_Closed, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                self._forget(conn)
                conn = None
                if fresh:
                    raise
                fresh = True
                continue
            except BaseException:
                self._forget(conn)
                raise
            if not keep:
                self._forget(conn)
            return status, reason, body

    def _forget(self, conn: _Connection) -> None:
        """Close this thread's connection; the next request opens another."""
        conn.close()
        self._local.conn = None


class _Closed(ConnectionError):
    """The server closed the connection before an answer began: it never read the request (a kept-alive connection
    it closed while idle), which may then be sent again."""


class _Connection:
    """One kept-alive HTTP/1.1 connection to the API server: each request written in one send, each answer's
    status line and headers read line by line, its body by Content-Length or in chunks."""

    MAX_LINE = 65536
    MAX_HEADERS = 100

    def __init__(self, host: str, port: int | None, tls: ssl.SSLContext | None) -> None:
        port = port or (443 if tls else 80)
        sock = socket.create_connection((host, port), timeout=60)
        try:
            self.sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        except BaseException:
            sock.close()
            raise
        self.file = self.sock.makefile("rb")
        self.host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes, bool]:
        """Status, reason, body, and whether the connection may carry another request."""
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if data is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(data or b'')}\r\n")
        self.sock.sendall(("".join(head) + "\r\n").encode("latin-1") + (data or b""))
        line = self._line()
        if not line:
            raise _Closed("the API server closed the connection")
        try:  # the answer has begun, so the server read the request: whatever cuts it off, it is not sent again
            return self._answer(method, line)
        except (ConnectionResetError, ssl.SSLEOFError, ValueError) as err:
            raise ConnectionError(f"the API server's answer was cut off or malformed: {err}") from err

    def _answer(self, method: str, line: bytes) -> tuple[int, str, bytes, bool]:
        """The rest of the answer whose first line is line."""
        version, status, reason, fields = self._head(line)
        while 100 <= status < 200:  # interim answers (100 Continue) a proxy may send unasked: the final one follows
            if not (line := self._line()):
                raise ConnectionError("the API server closed the connection after an interim answer")
            version, status, reason, fields = self._head(line)
        keep = version != "HTTP/1.0" and fields.get(b"connection", b"").lower() != b"close"
        if status in (204, 304) or method == "HEAD":
            return status, reason, b"", keep
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            return status, reason, self._chunks(), keep
        if (length := fields.get(b"content-length")) is not None:
            body = self.file.read(size := int(length))
            if len(body) != size:
                raise ConnectionError(f"the API server closed the connection {len(body)} of {size} bytes in")
            return status, reason, body, keep
        return status, reason, self.file.read(), False  # no length: the answer ends with the connection

    def _head(self, line: bytes) -> tuple[str, int, str, dict[bytes, bytes]]:
        """An answer's status line (line) and headers (names in lower case)."""
        version, status, reason = [*line.decode("latin-1").rstrip("\r\n").split(" ", 2), ""][:3]
        if not version.startswith("HTTP/1.") or not status.isdigit():
            raise ConnectionError(f"the API server answered something that is not HTTP/1.1: {line[:80]!r}")
        fields: dict[bytes, bytes] = {}
        for _ in range(self.MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                return version, int(status), reason, fields
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        raise ConnectionError(f"the API server answered more than {self.MAX_HEADERS} headers")

    def _line(self) -> bytes:
        line = self.file.readline(self.MAX_LINE + 1)
        if len(line) > self.MAX_LINE:
            raise ConnectionError("the API server answered a line longer than 64 KiB")
        return line

    def _chunks(self) -> bytes:
        parts = []
        while size := int(self._line().split(b";", 1)[0].strip() or b"0", 16):
            parts.append(self.file.read(size))
            if len(parts[-1]) != size or self._line() not in (b"\r\n", b"\n"):
                raise ConnectionError("the API server closed the connection inside a chunked answer")
        while self._line() not in (b"\r\n", b"\n", b""):  # trailers, if any
            pass
        return b"".join(parts)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _checked(headers: dict[str, str], source: str) -> dict[str, str]:
    """headers, when no value holds a line break (it would end the header in the request and start another)."""
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise CredentialsError(f"the {name} header from {source} holds a line break; remove it from the credential")
    return headers


def _file_or_data(section: dict[str, Any], key: str, base: Path) -> bytes | None:
    """A kubeconfig's `key` (a path, relative to the kubeconfig) or `key-data` (base64), as PEM bytes."""
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"])
    if section.get(key):
        return (base / section[key]).read_bytes()
    return None


def _tls(ca: bytes | None, cert: bytes | None, key: bytes | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if insecure:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if cert and key:
        # ssl loads a client certificate only from files; they live only while being loaded.
        with tempfile.NamedTemporaryFile() as certfile, tempfile.NamedTemporaryFile() as keyfile:
            certfile.write(cert), keyfile.write(key)
            certfile.flush()
            keyfile.flush()
            context.load_cert_chain(certfile.name, keyfile.name)
    return context

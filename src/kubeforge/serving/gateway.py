"""The inference gateway: Open Inference Protocol v2 over REST in front of Triton.

Clients (tritonclient included) call it as they would call Triton. Per request it picks
a version from the route table (weighted or sticky), checks the input against that
version's cached metadata, forwards the body unchanged, falls back once to the stable
version when the chosen one fails, mirrors to the shadow after answering, and records
metrics per model, version and role. A request routed to a version the gateway knows is
not ready is charged to that version as a failed try (outcome ``not_ready``) before it
falls back, so the canary analysis counts what the fallback rescued, whether or not the
canary was tried. The route table and the token file hot-reload; a request in flight
keeps the table it started with.

A model fed from a FeatureView also takes requests that carry entity keys instead of
features (see :mod:`.enrich`): the gateway reads the features from the online store and
sends Triton a request it rebuilt for the version that answers. Requests to models without
features never leave the path above.

Every answer carries a request id (``kubeforge-request-id``: the caller's OIP ``id``, or one
the gateway made up). What a version received and answered is handed, by reference, to drift
tracking (:mod:`.monitor`) and, for the sampled requests of a model that asks for it, to the
payload log (:mod:`.payloads`); both do their work after the response is out. For a model that takes
feedback every answered request is remembered by its id (:mod:`.feedback`), so labels posted later to
``/v2/models/{name}/feedback`` join it and feed live accuracy or error per version.
Error bodies name inputs, shapes and types, never input values.

Tokens name their caller, its tenant and priority (:mod:`.auth`). Before its body is read an inference request
is admitted against its tenant's rate and concurrency limits and the gateway's own cap, or answered 429 with
``Retry-After`` (:mod:`.tenancy`). Every request to a model gets a line in the access log (:mod:`.accesslog`):
who called, what answered, status and latency, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubeforge.core import feedbackset

from . import inference_protocol
from .accesslog import AccessLog
from .auth import ANONYMOUS, Caller, Forbidden, Tokens, Unauthorized
from .enrich import Lookup, Stores, Unavailable, entity_request
from .feedback import (
    BadFeedback,
    Feedback,
    QualityCollector,
    check_names,
    dataset,
    feature_list,
    merge_datasets,
    parse,
    since_seconds,
)
from .filewatch import FileWatch
from .joiner import Joiner, join_key
from .metrics import FALLBACK_REASONS, FALLBACKS, REGISTRY, RELOADS, UPSTREAM_REQUESTS
from .monitor import DriftCollector, Monitor
from .oip import HEADER_LENGTH, BadRequest, Body, validate
from .payloads import PayloadLogger
from .peers import INSTANCE_HEADER, KNOWN_FEATURES_HEADER, PEER_HEADER, Peers, PeerUnavailable
from .routes import Route, RouteTable, Target, compile_table
from .shadow import Job, Mirror
from .tenancy import Admission, TenancyCollector, Throttled
from .upstream import Answer, UpstreamFailure, Upstreams

log = logging.getLogger(__name__)

VERSION_HEADER = "kubeforge-model-version"
ROLE_HEADER = "kubeforge-model-role"
_VERSION_KEY, _ROLE_KEY = VERSION_HEADER.encode(), ROLE_HEADER.encode()
REQUEST_ID_HEADER = "kubeforge-request-id"
_REQUEST_ID_KEY, _HEADER_LENGTH_KEY = REQUEST_ID_HEADER.encode(), HEADER_LENGTH.encode()
# A caller's OIP id goes back as the request id header only when it is safe there as it is: printable
# ASCII (no line breaks to split the response's headers with) of a sane length. Others get a fresh id.
HEADER_SAFE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
FORWARDED = ("content-type", HEADER_LENGTH, "content-encoding")
MODEL_PATHS = "/v2/models/"
CALL = "kubeforge.call"
"""Scope key of the Call a logged request that FastAPI serves carries, for the handlers to name the caller."""
INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


@dataclass
class Settings:
    """How a gateway runs; the CLI fills it from flags."""

    routes: Path
    tokens: Path | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    reload_interval: float = 1.0
    health_interval: float = 1.0
    shadow_queue: int = 256
    payload_dir: Path | None = None
    """Where payload logs are written (for models whose route asks for one)."""
    access_log: str | None = None
    """Where the access log goes: "-" for stdout, a file path, or None for none."""
    access_log_max_mb: int = 100
    """Size at which an access log file is rotated."""
    access_log_max_files: int = 5
    """Rotated access log files kept."""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    """Port of the Open Inference Protocol over gRPC (:mod:`.grpcgateway`); 0 for none."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An Open Inference Protocol error body."""
    return Response(json.dumps({"error": message}), status, headers, media_type="application/json")


def throttled(refused: Throttled) -> Response:
    """429 naming the tenant, the limit and when to retry."""
    headers = {"retry-after": refused.retry_after_header}
    return Response(json.dumps(refused.body()), 429, headers, media_type="application/json")


@dataclass(slots=True)
class Call:
    """One request on its way through the gateway: when it arrived, who sent it and, once read, its id and size."""

    start: float
    wall: float
    request_id: str | None = None
    caller: Caller = ANONYMOUS
    received: int = 0
    fell_back: bool = False
    """The stable version answered after the version chosen failed or was known not to be ready."""
    throttled: str | None = None
    answered_by: Target | None = None
    """The version that answered (its log line names it), once one did."""


def request_id(given: object) -> str:
    """The caller's OIP id when the header can carry it, else a fresh one: 128 random bits in hex, as unique as a
    uuid4 at a third of its cost."""
    if isinstance(given, str) and HEADER_SAFE_ID.match(given):
        return given
    return os.urandom(16).hex()


def _parsed(content: bytes) -> RouteTable | Exception:
    """The route table content holds, or why it is refused."""
    try:
        return RouteTable.parse(content)
    except Exception as err:
        return err


def _count_fallbacks_from_zero(routes: Iterable[Route]) -> None:
    """A series at 0 for each fallback that can happen: dashboards show 0 rather than no data, and the first
    fallback is an increase rate() sees (a series born at 1 is not one)."""
    for route in routes:
        for target in route.versions.values():
            if target is not route.stable:
                for reason in FALLBACK_REASONS:
                    FALLBACKS.labels(route.name, target.version, target.role, reason)


class Gateway:
    """Route table, tokens, upstream pool, shadow mirror, drift trackers and payload log of one gateway process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.routes: dict[str, Route] = {}
        self.loaded = False
        self.tokens: Tokens | None = None
        self.upstreams = Upstreams()
        self.monitor = Monitor()
        self.mirror = Mirror(self.upstreams, self.monitor, capacity=settings.shadow_queue)
        self.payloads = PayloadLogger(settings.payload_dir)
        self.feedback = Feedback()
        self.peers = Peers(self.upstreams.client)
        self.stores = Stores()
        self.admission = Admission()
        self.joiner = Joiner(self.upstreams)
        self.access = AccessLog(settings.access_log, settings.access_log_max_mb, settings.access_log_max_files)
        self._route_watch = FileWatch(settings.routes)
        self._token_watch = FileWatch(settings.tokens) if settings.tokens else None

    # --- configuration -------------------------------------------------------------------

    def reload(self) -> None:
        """Apply changed route table and token files; a malformed one is refused and the old one kept."""
        content = self._route_watch.changed()
        if content is not None:
            self._take_routes(_parsed(content))
        self._reload_tokens()

    def _take_routes(self, table: RouteTable | Exception) -> None:
        if isinstance(table, Exception):
            RELOADS.labels("routes", "failed").inc()
            log.error("route table %s refused, keeping the previous one: %s", self.settings.routes, table)
            return
        known = {t.key: t for r in self.routes.values() for t in r.versions.values()}
        self.routes = compile_table(table, known)  # one assignment: requests see old or new, never half
        self.monitor.load(self.routes.values())
        self.feedback.load(self.routes.values())
        self.peers.load(table.peers or [])
        _count_fallbacks_from_zero(self.routes.values())
        self.loaded = True
        RELOADS.labels("routes", "ok").inc()
        log.info("route table loaded: %s", ", ".join(sorted(self.routes)) or "no models")

    def _reload_tokens(self) -> None:
        if self._token_watch is None:
            return
        tokens = self._token_watch.changed()
        if tokens is None:
            return
        try:
            self.tokens = Tokens(tokens.decode())
        except (ValueError, UnicodeDecodeError) as err:
            RELOADS.labels("tokens", "failed").inc()
            log.error("token file %s refused, keeping the previous one: %s", self.settings.tokens, err)
        else:
            self.admission.load(self.tokens, time.monotonic())
            RELOADS.labels("tokens", "ok").inc()
            log.info("token file loaded: tenants %s", ", ".join(sorted(self.tokens.tenants)) or "none")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                content = self._route_watch.changed()
                if content is not None:
                    # Parsed in a thread: a table with many features' drift baselines takes a good part of a second
                    # to parse, all of which would hold up the requests on this loop (docs/benchmarks.md, gateway,
                    # "A large route table").
                    self._take_routes(await asyncio.to_thread(_parsed, content))
                self._reload_tokens()
            except OSError as err:
                log.error("cannot read configuration: %s", err)

    async def _health(self) -> None:
        while True:
            self.stores.open(self.routes.values())
            targets = {t.key: t for r in self.routes.values() for t in r.versions.values()}
            await asyncio.gather(*(self.upstreams.probe(t) for t in targets.values()))
            await asyncio.sleep(self.settings.health_interval)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        self.reload()
        if self.settings.tokens and self.tokens is None:
            raise RuntimeError(f"token file {self.settings.tokens} is missing or has no tokens")
        collector = DriftCollector(lambda: self.monitor.tracked, self.monitor.flush)
        quality = QualityCollector(lambda: self.feedback)
        tenancy = TenancyCollector(self.admission)
        REGISTRY.register(collector)
        REGISTRY.register(quality)
        REGISTRY.register(tenancy)
        loops = (
            self._watch(),
            self._health(),
            self.mirror.run(),
            self.monitor.run(),
            self.payloads.run(),
            self.feedback.run(),
            self.access.run(),
        )
        tasks = [asyncio.create_task(c) for c in loops]
        grpc_server = None
        if self.settings.grpc_port:
            from .grpcgateway import start  # grpc is imported only by gateways that serve it

            grpc_server = await start(self, self.settings.grpc_host, self.settings.grpc_port)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(1.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            REGISTRY.unregister(collector)
            REGISTRY.unregister(quality)
            REGISTRY.unregister(tenancy)
            await self.upstreams.close()
            self.stores.close()
            self.payloads.close()
            self.access.close()

    # --- request path ----------------------------------------------------------------------

    def resolve(
        self, name: str, version: str | None, authorization: str | None, call: Call | None = None
    ) -> tuple[Route, Target | None]:
        """The route and, for /versions/{v}/ paths, the pinned version; raises for unknown ones. The caller the
        token names goes into call, also when it may not call this model."""
        route = self.routes.get(name)
        if route is None:
            raise HTTPException(404, f"unknown model {name!r}")
        if self.tokens is not None:
            try:
                caller = self.tokens.check(authorization, name)
            except Unauthorized as err:
                raise HTTPException(401, str(err), {"www-authenticate": "Bearer"}) from None
            except Forbidden as err:
                if call is not None:
                    call.caller = err.caller
                raise HTTPException(403, str(err)) from None
            if call is not None:
                call.caller = caller
        if version is None:
            return route, None
        target = route.versions.get(version)
        if target is None or target.role == "shadow":
            raise HTTPException(404, f"model {name!r} has no version {version!r} in service")
        return route, target

    async def _body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BadRequest(f"request body of {length} bytes is over the {limit}-byte limit", 413)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body is over the {limit}-byte limit", 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _plain(self, body: bytes, encoding: str | None) -> bytes:
        """The body as validation reads it: compressed requests (tritonclient can send them) inflated,
        bounded by the body limit so a small compressed bomb cannot blow up."""
        if not encoding or encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise BadRequest(f"unsupported content-encoding {encoding!r}", 415)
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            plain = inflater.decompress(body, self.settings.max_body_bytes + 1)
        except zlib.error as err:
            raise BadRequest(f"body is not valid {encoding}: {err}") from None
        if len(plain) > self.settings.max_body_bytes or inflater.unconsumed_tail:
            raise BadRequest("request body inflates past the body limit", 413)
        return plain

    async def infer(
        self, path: str, raw_headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> tuple[Response, Callable[[int], None]]:
        """POST .../infer, answered outside the web framework (see :mod:`.inference_protocol`): the framework's
        routing, request objects and ASGI messages cost more CPU per call than everything else the gateway does.
        Returns the answer and what settles the call once the answer's body bytes are sent."""
        call = Call(time.perf_counter(), time.time())
        match = INFER_PATH.match(path)
        if match is None:
            response = error(404, f"no route for {path}")
        else:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw_headers)}
            response = await self.answer(call, match["name"], match["version"], headers, receive)
        call.request_id = call.request_id or request_id(None)
        response.raw_headers.append((_REQUEST_ID_KEY, call.request_id.encode("latin-1")))
        model = match["name"] if match else None
        return response, lambda sent: self.settle(call, "POST", path, model, response, sent)

    async def answer(
        self, call: Call, name: str, version: str | None, headers: Mapping[str, str], receive: Receive
    ) -> Response:
        """The REST answer to one inference request, refusals included; the gRPC service answers from it too, so
        both protocols route, authorize, limit, fall back, mirror and record alike."""
        try:
            return await self._infer(call, name, version, headers, receive)
        except HTTPException as exc:
            return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        except Throttled as refused:
            call.throttled = refused.reason
            return throttled(refused)
        except Exception:  # a fault in the gateway itself: answered, logged and counted like any other answer
            log.exception("inference request %s for model %s failed in the gateway", call.request_id, name)
            return error(500, "internal error in the gateway; its log has the traceback")

    def settle(self, call: Call, method: str, path: str, model: str | None, response: Response, sent: int) -> None:
        """Count an answered inference request against its tenant and write its access log line."""
        self.admission.count(call.caller, response.status_code)
        if self.access.enabled:
            by = call.answered_by
            version, role = (None, None) if by is None else (by.version, "fallback" if call.fell_back else by.role)
            self._log(call, method, path, model, version, role, response.status_code, sent)

    def _log(
        self,
        call: Call,
        method: str,
        path: str,
        model: str | None,
        version: str | None,
        role: str | None,
        status: int,
        sent: int,
    ) -> None:
        latency = time.perf_counter() - call.start
        entry = (call.wall, call.request_id, call.caller, method, path, model, version, role, status, latency, sent)
        self.access.record((*entry, call.received, call.throttled))

    async def _infer(
        self, call: Call, name: str, version: str | None, headers: Mapping[str, str], receive: Receive
    ) -> Response:
        route, pinned = self.resolve(name, version, headers.get("authorization"), call)
        admitted = self.admission.admit(call.caller, time.monotonic())
        try:
            return await self._forward(call, route, pinned, headers, receive)
        finally:
            self.admission.release(admitted)

    async def _forward(
        self, call: Call, route: Route, pinned: Target | None, headers: Mapping[str, str], receive: Receive
    ) -> Response:
        target = pinned or route.pick(headers.get(route.sticky_header) if route.sticky_header else None)
        can_fall_back = pinned is None and route.spec.fallback and target is not route.stable
        if can_fall_back and not target.ready:
            target, can_fall_back = self._skip(route, target, call), False
        lookup: Lookup | None = None
        joining: tuple[Hashable, dict[str, Any]] | None = None  # its join key and checked request
        try:
            body = await self._body(headers, receive)
            call.received = len(body)
            header_length = headers.get(HEADER_LENGTH)
            length = (
                int(header_length) if header_length and header_length.isdigit() else (-1 if header_length else None)
            )
            plain = self._plain(body, headers.get("content-encoding"))
            request = entity_request(plain, length, route) if route.features is not None else None
            if request is not None:
                call.request_id = request_id(request.request.get("id"))
            if request is not None and target.columns is None and can_fall_back:
                target, can_fall_back = self._skip(route, target, call), False  # a version the view cannot feed
            schema = target.schema or await self.upstreams.schema(target)
            if schema is None and can_fall_back:
                target, can_fall_back = self._skip(route, target, call), False
                schema = target.schema or await self.upstreams.schema(target)
            if schema is None:
                self._not_ready(target)
                message = f"model {route.name!r} version {target.version} is not ready"
                return self._answered(call, target, error(503, message))
            if request is None:
                checked = validate(plain, length, schema)
                call.request_id = request_id(checked.get("id"))
                forward = {k: v for k in FORWARDED if (v := headers.get(k)) is not None}
                if route.spec.join_requests and (key := join_key(checked, schema)) is not None:
                    joining = key, checked
            else:
                lookup = await self.stores.lookup(route, request.entities(schema))
                body, forward = lookup.body(target)
                validate(body, int(forward[HEADER_LENGTH]), schema)
        except (BadRequest, Unavailable) as err:
            return self._answered(call, target, error(err.status, str(err)))
        try:
            if joining is None:
                answer = await self.upstreams.infer(target, body, forward, route.timeout)
            else:
                answer = await self.joiner.infer(
                    target, *joining, (plain, length), (body, forward), schema, route.timeout
                )
        except UpstreamFailure as err:
            if not can_fall_back:
                return self._answered(call, target, error(504 if err.reason == "timeout" else 502, str(err)))
            FALLBACKS.labels(route.name, target.version, target.role, err.reason).inc()
            target, call.fell_back = route.stable, True
            try:
                if lookup is not None:
                    body, forward = lookup.body(target)
                answer = await self.upstreams.infer(target, body, forward, route.timeout)
            except (BadRequest, Unavailable) as refused:
                return self._answered(call, target, error(refused.status, str(refused)))
            except UpstreamFailure as again:
                return self._answered(call, target, error(504 if again.reason == "timeout" else 502, str(again)))
        response = self._answered(call, target, self._response(answer))
        if answer.status != 200:
            return response
        # What the version received: the caller's request (inflated), or the one rebuilt from the online store.
        caller: Body = (plain, length)
        received = caller if lookup is None else (body, int(forward[HEADER_LENGTH]))
        self.monitor.record(target, *received, answer.content, answer.header_size)
        assert call.request_id is not None
        if route.spec.feedback is not None:
            self.feedback.record(route, target, call.request_id, (answer.content, answer.header_size))
        if route.spec.payload_log is not None:
            rebuilt = None if lookup is None else received
            self.payloads.offer(
                route, target, call.request_id, call.start, caller, rebuilt, (answer.content, answer.header_size)
            )
        if pinned is None:
            for mirrored in route.mirrors(target):
                if lookup is None:
                    self.mirror.submit(Job(route, mirrored, body, forward, answer, caller))
                elif mirrored.columns is not None:
                    with contextlib.suppress(BadRequest):  # a value only the mirrored version takes is missing
                        mirrored_body, mirrored_forward = lookup.body(mirrored)
                        observed = (mirrored_body, int(mirrored_forward[HEADER_LENGTH]))
                        self.mirror.submit(Job(route, mirrored, mirrored_body, mirrored_forward, answer, observed))
        return response

    def _not_ready(self, target: Target) -> None:
        """Charge target a failed try that was never sent: it was known not to be ready. Without this,
        a canary that went down would look healthier the longer the gateway routed around it."""
        UPSTREAM_REQUESTS.labels(*self.upstreams.bind(target).labels, "not_ready").inc()

    def _skip(self, route: Route, target: Target, call: Call) -> Target:
        """Fall back from a version known not to be ready without trying it; the stable version answers."""
        call.fell_back = True
        self._not_ready(target)
        FALLBACKS.labels(route.name, target.version, target.role, "not_ready").inc()
        return route.stable

    @staticmethod
    def _response(answer: Answer) -> Response:
        response = Response(answer.content, answer.status, media_type=answer.content_type)
        if answer.header_length is not None:
            response.raw_headers.append((_HEADER_LENGTH_KEY, answer.header_length.encode("latin-1")))
        return response

    def _answered(self, call: Call, target: Target, response: Response) -> Response:
        """Name the version that answered; its headers are appended raw (none of them is there yet), since
        ``response.headers[...] =`` builds a header view and scans it each time."""
        call.answered_by = target
        response.raw_headers += ((_VERSION_KEY, target.version.encode()), (_ROLE_KEY, target.role.encode()))
        self.upstreams.bind(target).answered(response.status_code, time.perf_counter() - call.start)
        return response

    def _route_of(self, request: Request) -> tuple[Route, Target | None]:
        params = request.path_params
        return self.resolve(params["name"], params.get("version"), request.headers.get("authorization"), _call(request))

    async def metadata(self, request: Request) -> Response:
        route, pinned = self._route_of(request)
        status, body = await self.describe(route, pinned, request.url.path.endswith("/config"))
        headers = {VERSION_HEADER: (pinned or route.stable).version} if status == 200 else None
        return Response(json.dumps(body), status, headers, media_type="application/json")

    async def describe(self, route: Route, pinned: Target | None, config: bool) -> tuple[int, dict[str, Any]]:
        """Triton's metadata (or config) of the pinned or stable version under the model's own name, with the
        versions in service; Triton's error body, or a 503 one when Triton cannot be reached."""
        target = pinned or route.stable
        try:
            resp = await self.upstreams.get(target, "/config" if config else "")
            body: dict[str, Any] = resp.json()
        except (OSError, TimeoutError, ValueError) as err:
            return 503, {"error": f"model {route.name!r} version {target.version} unreachable: {type(err).__name__}"}
        if resp.status_code != 200:
            return resp.status_code, body
        body["name"] = route.name
        if not config and pinned is None:
            body["versions"] = sorted(t.version for t in route.versions.values() if t.role != "shadow")
        return 200, body

    async def post_feedback(self, request: Request) -> Response:
        """POST /v2/models/{name}/feedback: labels joined to earlier answers by request id; counts by result. Labels
        for answers another replica of this gateway gave join there (:mod:`.peers`)."""
        route, _ = self.resolve(request.path_params["name"], None, request.headers.get("authorization"), _call(request))
        peer = PEER_HEADER in request.headers
        headers = {INSTANCE_HEADER: self.peers.instance} if peer else None
        try:
            payload = await self._body(request.headers, request.receive)
            items, positions = parse(payload)
            checked = self.feedback.check(route, items, positions if peer else None)
            if peer and request.query_params.get("dryRun") == "true":
                return Response(json.dumps({"results": checked.results}), 200, headers, media_type="application/json")
            parts = {} if peer else await self.peers.find(route.name, items, checked, request.headers)
        except (BadRequest, BadFeedback, PeerUnavailable) as err:
            return error(err.status, str(err), headers)
        records = self.feedback.apply(route, checked)
        await self.peers.join(route.name, items, parts, checked, request.headers)
        if not peer:
            self.feedback.missed(route, checked)
        if route.spec.payload_log is not None:
            await self.payloads.labels(route.name, route.spec.payload_log, records)
        answer = {**checked.counts(), **({"results": checked.results} if peer else {})}
        return Response(json.dumps(answer), 200, headers, media_type="application/json")

    async def feedback_dataset(self, request: Request) -> Response:
        """GET /v2/models/{name}/feedback/dataset?since=24h&target=label[&features=f0,f1]: labelled payload records
        as CSV, every replica's of this gateway."""
        route, _ = self.resolve(request.path_params["name"], None, request.headers.get("authorization"), _call(request))
        peer = PEER_HEADER in request.headers
        headers = {INSTANCE_HEADER: self.peers.instance} if peer else None
        directory = self.settings.payload_dir
        if route.spec.payload_log is None or directory is None:
            message = f"model {route.name!r} has no payload log to build a data set from: set its payloadLog"
            return error(404, message, headers)
        try:
            since = since_seconds(request.query_params.get("since", "24h"))
            target = request.query_params.get("target", "label")
            features = feature_list(request.query_params.get("features"))
            gathers = not peer and bool(self.peers.others)  # and checks the names against those all replicas know
            alone = not peer and not gathers  # checks them before reading its logs
            found = await asyncio.to_thread(dataset, directory, route, since, target, time.time(), features, alone)
            if gathers:
                sets = await self.peers.datasets(f"{request.url.path}?{request.url.query}", request.headers)
                found = merge_datasets([found, *sets]) if sets else found
                check_names(route.name, target, features, found.known)
        except (BadFeedback, PeerUnavailable) as err:
            return error(err.status, str(err), headers)
        counted = {**(headers or {}), feedbackset.ROWS_LEFT_OUT_HEADER: str(found.left_out)}
        if peer:
            counted[KNOWN_FEATURES_HEADER] = json.dumps(sorted(found.known))
        return Response(found.text, 200, counted, "text/csv")

    async def model_ready(self, request: Request) -> Response:
        route, pinned = self._route_of(request)
        return Response(status_code=200 if await self.model_is_ready(route, pinned) else 503)

    async def model_is_ready(self, route: Route, pinned: Target | None) -> bool:
        return await self.upstreams.probe(pinned or route.stable) and self.stores.ready(route)

    async def logged(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a model request other than inference through app, with its line in the access log."""
        call = scope[CALL] = Call(time.perf_counter(), time.time())
        status, sent, version, role = 500, 0, None, None

        async def watch(message: Message) -> None:
            nonlocal status, sent, version, role
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers", ()):
                    if key == _VERSION_KEY:
                        version = value.decode("latin-1")
                    elif key == _ROLE_KEY:
                        role = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                call.received += len(message.get("body", b""))
            return message

        try:
            await app(scope, counted, watch)
        finally:
            path = scope["path"]
            model = path[len(MODEL_PATHS) :].split("/", 1)[0] or None
            self._log(call, scope["method"], path, model, version, role, status, sent)

    async def server_ready(self, _: Request) -> Response:
        return Response(status_code=200 if self.ready() else 503)

    def ready(self) -> bool:
        """A route table is loaded and every model's stable version (and feature store) can answer."""
        return self.loaded and all(r.stable.ready and self.stores.ready(r) for r in self.routes.values())


def _call(request: Request) -> Call | None:
    call = request.scope.get(CALL)
    return call if isinstance(call, Call) else None


async def _live(_: Request) -> Response:
    return Response(status_code=200)


SERVER_METADATA = {"name": "kubeforge-gateway", "version": "v2", "extensions": ["binary_tensor_data"]}


async def _server_metadata(_: Request) -> Response:
    return Response(json.dumps(SERVER_METADATA))


async def _metrics(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


def create_app(gw: Gateway) -> ASGIApp:
    """The gateway's ASGI app: everything but inference requests, which its HTTP protocol answers
    (:func:`serve`)."""
    app = FastAPI(lifespan=gw.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(HTTPException, _http_error)
    add = app.router.add_route
    add("/v2", _server_metadata, ["GET"])
    add("/v2/health/live", _live, ["GET"])
    add("/v2/health/ready", gw.server_ready, ["GET"])
    add("/metrics", _metrics, ["GET"])
    add("/v2/models/{name}/feedback", gw.post_feedback, ["POST"])
    add(feedbackset.path("{name}"), gw.feedback_dataset, ["GET"])
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add(prefix + "/ready", gw.model_ready, ["GET"])
        add(prefix + "/config", gw.metadata, ["GET"])
        add(prefix, gw.metadata, ["GET"])

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and gw.access.enabled and scope["path"].startswith(MODEL_PATHS):
            await gw.logged(app, scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the gateway with uvicorn on uvloop with httptools' parser, named rather than left to uvicorn's "auto": a
    gateway without them would fall back to pure-Python parsing at about 1.6 times the CPU per request, silently.
    uvicorn's httptools protocol runs with inference requests answered by the gateway (:mod:`.inference_protocol`)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gw = Gateway(settings)
    uvicorn.run(
        create_app(gw),
        host=host,
        port=port,
        loop="uvloop",
        http=inference_protocol.protocol(gw.infer),
        access_log=False,
        log_level="warning",
        proxy_headers=False,
    )

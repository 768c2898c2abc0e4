"""Requests that carry entity keys instead of features: the model's input read from the online store.

A model deployed with ``spec.features`` takes, besides its own ``features`` input, an
input named after the entity key: one key per row (INT64 or INT32 for integer keys, BYTES
for string and bytes keys; shape [rows] or [rows, 1]; JSON or binary tensor data, so
tritonclient works unchanged). Per request the gateway reads every feature any live
version takes, for all rows, in one online-store read (at most: see below), then builds the ``features``
tensor (FP32 [rows, n]) of the version that answers in the order that version was
trained with, and again for another version when a fallback or a mirror goes there: the
stable and the canary may have been trained on different features.

A value older than the view's ttl counts as missing, as one never written does. Either
takes the feature's declared default; without one the request is refused with 422 naming
the entity and the feature, because a model fed a made-up value answers wrongly without
anyone noticing.

Feast is imported here only, once a route table names a view, and in a thread: ``import
feast`` takes seconds, which a gateway without features never pays and a gateway with
features pays before it reports ready rather than on a request. Feast's objects are not
thread-safe, so each namespace's store has one thread of its own, off the event loop, and
reads run there one at a time; the requests that arrive while a read runs share the next
one, so under load Feast's cost per call (more than per row) is paid once per batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kubeforge.core.modelcontract import INPUT_NAME
from kubeforge.featurestore.config import StoreSettings

from .metrics import FEATURE_LOOKUP_DURATION, FEATURE_LOOKUP_MISSES
from .oip import HEADER_LENGTH, BadRequest, Schema, TensorSchema, binary_bytes, flatten, validate
from .routes import FeatureRoute, Route, Target

if TYPE_CHECKING:
    from kubeforge.featurestore.store import Store

log = logging.getLogger(__name__)

# Request datatypes that carry keys of each join-key type.
KEY_DATATYPES = {"INT64": ("INT64", "INT32"), "INT32": ("INT64", "INT32"), "STRING": ("BYTES",), "BYTES": ("BYTES",)}
SERVED, MISSING, EXPIRED = 0, 1, 2
NAMED = 5
"""Unserved values a 422 names; the rest are counted."""
RETRY_SECONDS = 10.0
"""Wait before opening a store again after it failed to open."""


Values = tuple[np.ndarray, np.ndarray]
"""float64 values [rows, features] (0 where not served) and int8 state [rows, features]: SERVED, MISSING, EXPIRED."""


class NotNumbers(ValueError):
    """The view holds values a model's FP32 input cannot take (the operator names String features beforehand)."""


class Unavailable(Exception):
    """The online store cannot answer (not open yet, unreachable, the view unknown to it): a 503."""

    status = 503


@dataclass(frozen=True)
class Entities:
    """The rows of a request that names entities instead of sending the model's features."""

    keys: list[Any]
    """One per row, typed as the view's join key is."""
    rest: dict[str, Any]
    """The request without its inputs (id, parameters, outputs): what goes on to Triton with the features."""


@dataclass(frozen=True)
class EntityRequest:
    """A request that carries the route's entity-key input, not yet checked against the version's schema."""

    route: Route
    features: FeatureRoute
    plain: bytes
    header_length: int | None
    request: dict[str, Any]
    entity: dict[str, Any]

    def entities(self, schema: Schema) -> Entities:
        """The entity keys, after the usual checks (JSON, datatype, shape, sizes, batch size, outputs) of the
        entity input as the request states it; raises BadRequest naming what is wrong."""
        key, datatypes = self.features.entity_key, KEY_DATATYPES[self.features.value_type]
        datatype = self.entity["datatype"] if self.entity.get("datatype") in datatypes else datatypes[0]
        shape = self.entity.get("shape")
        wanted = (-1, 1) if isinstance(shape, list) and len(shape) == 2 else (-1,)
        entity_schema = Schema(
            self.route.name, {key: TensorSchema(datatype, wanted)}, schema.outputs, schema.max_batch_size
        )
        validate(self.plain, self.header_length, entity_schema)
        assert isinstance(shape, list)
        rows, offset = shape[0], self.header_length or len(self.plain)
        if "binary_data_size" not in (self.entity.get("parameters") or {}):
            keys = flatten(self.entity["data"])
        elif datatype == "BYTES":
            keys = binary_bytes(self.plain[offset:], rows, key)
        else:
            keys = np.frombuffer(self.plain, "<i8" if datatype == "INT64" else "<i4", rows, offset).tolist()
        if self.features.value_type == "INT32" and not all(-(2**31) <= k < 2**31 for k in keys):
            raise BadRequest(f"input {key!r}: entity keys of FeatureView {self.features.feature_view!r} are INT32")
        if self.features.value_type == "BYTES":
            keys = [k.encode() if isinstance(k, str) else k for k in keys]
        elif self.features.value_type == "STRING":
            try:
                keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
            except UnicodeDecodeError:
                view = self.features.feature_view
                raise BadRequest(f"input {key!r}: entity keys of FeatureView {view!r} are UTF-8 strings") from None
        return Entities(keys, {k: v for k, v in self.request.items() if k != "inputs"})


def entity_request(plain: bytes, header_length: int | None, route: Route) -> EntityRequest | None:
    """The request if it carries the route's entity-key input; None when it sends the model's features inline
    (or is no JSON object with a list of inputs), and the usual checks apply and name what is wrong."""
    features = route.features
    assert features is not None
    try:
        request = json.loads(plain[:header_length] if header_length else plain)
        inputs = {i.get("name"): i for i in request["inputs"] if isinstance(i, dict)}
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError):
        return None
    key = features.entity_key
    entity = inputs.get(key)
    if entity is None:
        if INPUT_NAME in inputs or not isinstance(request["inputs"], list):
            return None
        raise BadRequest(
            f"model {route.name!r} needs input {key!r} ({' or '.join(KEY_DATATYPES[features.value_type])}, one "
            f"entity key per row, read from FeatureView {features.feature_view!r}) or {INPUT_NAME!r} (the features)"
        )
    if INPUT_NAME in inputs:
        raise BadRequest(f"send either {key!r} (entity keys) or {INPUT_NAME!r} (features), not both")
    return EntityRequest(route, features, plain, header_length, request, entity)


@dataclass(frozen=True)
class Lookup:
    """The values of one request's entities: every feature of the route's lookup, row by row."""

    route: Route
    request: Entities
    values: np.ndarray
    """float64 [rows, features]; 0 where not served."""
    state: np.ndarray
    """int8 [rows, features]: SERVED, MISSING or EXPIRED."""

    def body(self, target: Target) -> tuple[bytes, dict[str, str]]:
        """The request for target with its features in its order (binary tensor data, exact float32), and the
        headers it goes with; raises BadRequest (422) naming what is neither served nor defaulted."""
        features = self.route.features
        assert features is not None
        if target.columns is None:
            raise Unavailable(
                f"model {self.route.name!r} version {target.version} cannot be fed from FeatureView "
                f"{features.feature_view!r}: its features are not all in the view (see the ModelDeployment's "
                f"conditions); send {INPUT_NAME!r} inline"
            )
        values, state = self.values[:, target.columns], self.state[:, target.columns]
        if state.any():
            order = [self.route.lookup[c] for c in target.columns]
            for col, feature in enumerate(order):
                if feature in features.defaults and state[:, col].any():
                    values[state[:, col] != SERVED, col] = features.defaults[feature]
                    state[:, col] = SERVED
            if state.any():
                raise BadRequest(self._unserved(target, order, state), 422)
        tensor = values.astype(np.float32)
        spec = {"name": INPUT_NAME, "datatype": "FP32", "shape": list(tensor.shape)}
        head = json.dumps(
            {**self.request.rest, "inputs": [{**spec, "parameters": {"binary_data_size": tensor.nbytes}}]}
        )
        header = head.encode()
        return header + tensor.tobytes(), {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}

    def _unserved(self, target: Target, order: list[str], state: np.ndarray) -> str:
        features = self.route.features
        assert features is not None
        rows, cols = np.nonzero(state)
        named = []
        for row, col in zip(rows[:NAMED].tolist(), cols[:NAMED].tolist(), strict=True):
            key = self.request.keys[row]
            why = (
                "missing"
                if state[row, col] == MISSING
                else f"expired (older than ttl {_duration(features.ttl_seconds)})"
            )
            named.append(
                f"entity {features.join_key}={key if isinstance(key, int) else repr(key)}: feature {order[col]} {why}"
            )
        more = f"; and {len(rows) - NAMED} more" if len(rows) > NAMED else ""
        return (
            f"model {self.route.name!r} version {target.version}: FeatureView {features.feature_view!r} has no usable "
            f"value and the feature declares no default: {'; '.join(named)}{more}"
        )


def _duration(seconds: float) -> str:
    """A ttl as its FeatureView spells it ("24h", "1h30m", "90s")."""
    whole = int(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


class _Online:
    """One namespace's store, opened and read in a thread of its own."""

    def __init__(self, settings: StoreSettings, namespace: str):
        self.namespace, self.settings = namespace, settings
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"features-{namespace}")
        self.opening: Future[Store] = self.thread.submit(self._open)
        self.failed_at: float | None = None
        self.reported: str | None = None
        self.waiting: dict[Any, list[tuple[list[Any], asyncio.Future[Values]]]] = {}
        self.reading: dict[Any, asyncio.Task[None]] = {}

    def _open(self) -> Store:
        from kubeforge.featurestore.store import Store

        start = time.perf_counter()
        store = Store(self.settings, self.namespace)
        log.info("feature store of namespace %s open after %.1fs", self.namespace, time.perf_counter() - start)
        return store

    @property
    def store(self) -> Store | None:
        if self.opening.done() and self.opening.exception() is None:
            return self.opening.result()
        return None

    def problem(self) -> str:
        """Why the store does not answer, for a 503."""
        if not self.opening.done():
            return f"the feature store of namespace {self.namespace!r} is still opening"
        return (
            f"the feature store of namespace {self.namespace!r} failed to open: {_describe(self.opening.exception())}"
        )

    def retry(self) -> None:
        """Open again a while after a failure, logging each new reason once."""
        err = self.opening.exception() if self.opening.done() else None
        if err is None:
            return
        if self.reported != str(err):
            self.reported = str(err)
            log.error("%s; trying again every %gs", self.problem(), RETRY_SECONDS)
        now = time.monotonic()
        if self.failed_at is None:
            self.failed_at = now
        elif now - self.failed_at >= RETRY_SECONDS:
            self.failed_at = None
            self.opening = self.thread.submit(self._open)

    async def read(self, features: FeatureRoute, names: tuple[str, ...], keys: list[Any]) -> Values:
        """values and state [len(keys), len(names)] of the entities: read with the keys of every other request for
        the same features that arrived while the previous read was running, in one call."""
        waiter: asyncio.Future[Values] = asyncio.get_running_loop().create_future()
        what = (features.feature_view, features.join_key, features.ttl_seconds, names)
        queue = self.waiting.setdefault(what, [])
        queue.append((keys, waiter))
        if what not in self.reading:
            self.reading[what] = asyncio.create_task(self._drain(what, features, names))
        return await waiter

    async def _drain(self, what: Any, features: FeatureRoute, names: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue := self.waiting.pop(what, None):
                keys = [key for part, _ in queue for key in part]
                try:
                    values, state = await loop.run_in_executor(self.thread, self._read, features, list(names), keys)
                except Exception as err:
                    for _, waiter in queue:
                        if not waiter.done():
                            waiter.set_exception(err)
                    continue
                row = 0
                for part, waiter in queue:
                    if not waiter.done():  # its request may have gone meanwhile
                        waiter.set_result((values[row : row + len(part)], state[row : row + len(part)]))
                    row += len(part)
        finally:
            del self.reading[what]

    def _read(self, features: FeatureRoute, names: list[str], keys: list[Any]) -> Values:
        store = self.store
        assert store is not None
        rows = {features.join_key: keys}
        try:
            found = store.online(features.feature_view, names, rows, features.ttl_seconds)
        except Exception:
            # This process's copy of the registry may predate the view or its last change (Feast re-reads a file
            # registry every 10 minutes): read it afresh and try once more.
            store.feast.refresh_registry()
            found = store.online(features.feature_view, names, rows, features.ttl_seconds)
        state = np.zeros((len(keys), len(names)), np.int8)
        for code, misses in ((MISSING, found.missing), (EXPIRED, found.expired)):
            for row, feature in misses:
                state[row, names.index(feature)] = code
        try:
            values = np.array([[0.0 if v is None else v for v in row] for row in found.rows], dtype=np.float64)
        except (TypeError, ValueError):
            raise NotNumbers(f"FeatureView {features.feature_view!r} holds values that are not numbers") from None
        return values.reshape(state.shape), state


def _describe(err: BaseException | None) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


class Stores:
    """The online stores of the namespaces whose views the route table names."""

    def __init__(self, settings: Callable[[], StoreSettings] = StoreSettings.from_env):
        self._settings = settings
        self._online: dict[str, _Online] = {}

    def open(self, routes: Iterable[Route]) -> None:
        """Start opening the stores routes need (in the background); retry those that failed."""
        for route in routes:
            if route.features is None:
                continue
            namespace = route.features.namespace
            online = self._online.get(namespace)
            if online is None:
                self._online[namespace] = _Online(self._settings(), namespace)
            else:
                online.retry()

    def ready(self, route: Route) -> bool:
        """Whether requests with entity keys can be answered (always for a route without features)."""
        if route.features is None:
            return True
        online = self._online.get(route.features.namespace)
        return online is not None and online.store is not None

    async def lookup(self, route: Route, request: Entities) -> Lookup:
        """The values of the request's entities, in one read (shared with the requests that arrive while another
        read runs); raises Unavailable when the store cannot answer."""
        features = route.features
        assert features is not None
        online = self._online.get(features.namespace)
        if online is None or online.store is None:
            raise Unavailable(
                online.problem() if online else f"the feature store of {features.namespace!r} is not open"
            )
        view = features.feature_view
        start = time.perf_counter()
        try:
            values, state = await online.read(features, route.lookup, request.keys)
        except NotNumbers as err:
            raise BadRequest(str(err), 422) from None
        except Exception as err:
            raise Unavailable(f"reading FeatureView {view!r} failed: {_describe(err)}") from err
        finally:
            FEATURE_LOOKUP_DURATION.labels(features.namespace, view).observe(time.perf_counter() - start)
        for kind, code in (("missing", MISSING), ("expired", EXPIRED)):
            if count := int(np.count_nonzero(state == code)):
                FEATURE_LOOKUP_MISSES.labels(features.namespace, view, kind).inc(count)
        return Lookup(route, request, values, state)

    def close(self) -> None:
        for online in self._online.values():
            online.thread.shutdown(wait=False, cancel_futures=True)

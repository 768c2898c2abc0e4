"""What the ModelDeployment operator knows of registered model versions, shared by every deployment that serves
them: one :class:`Versions` per operator process, in kopf's memo.

An alias or version is asked of MLflow at most once per RESOLVE_TTL seconds, whatever the number of deployments
that refer to it (an answer that it does not exist included: deployments waiting for a version to be registered
ask on every pass), and the version's approval, run and task come with that one answer. What cannot change once a
version is registered (its input order, its drift baseline) is read once, and again only when the version turns
out to be another registration: MLflow numbers the versions of a model deleted and registered again from 1, and
a version whose run changed is not the one read before. Each map keeps its newest CACHE_MAX entries: a retraining
loop registers versions for as long as it runs, and an entry dropped is read again if its version still serves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeVar, cast

from pydantic import ValidationError

from ...core import modelcontract as mc
from ...core.approval import Approval
from ...core.mlflow_rest import MLflowError, MLflowRegistry, ModelVersion, NotFound
from ...serving.routes import Task, VersionDrift, baseline_text
from .clock import Ref
from .rollout import DriftBaseline

RESOLVE_TTL = 3.0
"""Seconds an answer of the registry is used for (by the clock and every pass) before it is asked again."""
CACHE_MAX = 1024
"""Entries each map keeps, the newest."""
_V = TypeVar("_V")


class Known(NamedTuple):
    """A version as its last resolution found it."""

    run_id: str  # the run it was registered from: another one means another registration under the same number
    approval: Approval


class Versions:
    """The registry's answers about versions, for every ModelDeployment of this process (see the module)."""

    def __init__(self, registry: MLflowRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()  # passes run in kopf's threads; reads of one key need none
        self._resolved: dict[tuple[str, str], tuple[float, str, str]] = {}
        """(model, alias or v<n>) -> (when, version, "") or, when the registry had none, (when, "", why)"""
        self._known: dict[tuple[str, str], Known] = {}  # (model, version) -> as last resolved
        self._tasks: dict[str, str] = {}  # model -> the task tag of its version last resolved
        self._orders: dict[tuple[str, str], list[str] | None] = {}  # (model, version) -> its kubeforge.features
        self._baselines: dict[tuple[str, str], DriftBaseline] = {}  # (model, version) -> its drift baseline

    def resolve(self, name: str, alias: str | None, version: int | None) -> str:
        """The version alias (or version) of model name is; raises NotFound or MLflowError."""
        key = (name, alias or f"v{version}")
        hit = self._resolved.get(key)
        if hit and time.monotonic() - hit[0] < RESOLVE_TTL:
            if hit[2]:
                raise NotFound(hit[2])
            return hit[1]
        try:
            mv = self.registry.by_alias(name, alias) if alias else self.registry.by_version(name, version or 0)
        except NotFound as err:
            with self._lock:
                self._keep(self._resolved, key, (time.monotonic(), "", str(err) or type(err).__name__))
            raise
        with self._lock:
            self._keep(self._resolved, key, (time.monotonic(), mv.version, ""))
            self._learn(mv)
            if mv.tags.get(mc.TAG_TASK):
                self._keep(self._tasks, name, mv.tags[mc.TAG_TASK])
        return mv.version

    def approval(self, name: str, version: str) -> Approval | None:
        """The version's approval tags as its last resolution found them."""
        known = self._known.get((name, version))
        return known.approval if known else None

    def run(self, model: str, version: str) -> str | None:
        """The run a version was registered from, as its last resolution found it or asked now; None when MLflow
        cannot tell."""
        known = self._known.get((model, version))
        if known is None:
            try:
                mv = self.registry.by_version(model, version)
            except MLflowError:
                return None
            with self._lock:
                known = self._learn(mv)
        return known.run_id

    def task(self, name: str) -> str | None:
        """The task tag of the model's version last resolved."""
        return self._tasks.get(name)

    def answers(self, refs: Iterable[Ref]) -> tuple[Any, ...]:
        """What the registry says of each reference now (its version, that version's run and approval, or the
        error): the clock compares them with what a ModelDeployment's last pass used."""
        said: list[Any] = []
        for name, alias, version in refs:
            try:
                found = self.resolve(name, alias, version)
            except MLflowError as err:
                said.append(type(err).__name__)
            else:
                said.append((found, self._known.get((name, found))))
        return tuple(said)

    def feature_order(self, model: str, version: str) -> list[str] | None:
        """A version's features in input order (the tag is written when the version is registered); None when MLflow
        cannot tell now, to be asked again on the next pass."""
        key = (model, version)
        if key not in self._orders:
            try:
                tag = self.registry.by_version(model, version).tags.get(mc.TAG_FEATURES)
            except MLflowError:
                return None
            with self._lock:
                return self._keep(self._orders, key, json_names(tag))
        return self._orders[key]

    def baseline(self, model: str, version: str) -> DriftBaseline | None:
        """A version's drift baseline (the trainer logs it before registering the version); None while MLflow
        cannot tell, to be asked again on the next pass."""
        key = (model, version)
        if key not in self._baselines:
            try:
                mv = self.registry.by_version(model, version)
                raw = self.registry.artifact(mv.run_id, mc.BASELINE_ARTIFACT)
            except NotFound:
                found = DriftBaseline(missing=f"its run logged no {mc.BASELINE_ARTIFACT}")
            except MLflowError:
                return None
            else:
                found = version_drift(raw, mv.tags)
            with self._lock:
                return self._keep(self._baselines, key, found)
        return self._baselines[key]

    def _learn(self, mv: ModelVersion) -> Known:
        """Record a version as the registry answered for it, forgetting what was read once of it when its run
        changed (deleted and registered again). Called under the lock."""
        pair = (mv.name, mv.version)
        before = self._known.get(pair)
        if before is not None and before.run_id != mv.run_id:
            self._orders.pop(pair, None)
            self._baselines.pop(pair, None)
        return self._keep(self._known, pair, Known(mv.run_id, Approval.of(mv.tags)))

    @staticmethod
    def _keep(cache: dict[Any, _V], key: Any, value: _V) -> _V:
        """value, stored in cache as its newest entry; the oldest go beyond CACHE_MAX. Called under the lock."""
        cache.pop(key, None)
        cache[key] = value
        while len(cache) > CACHE_MAX:
            del cache[next(iter(cache))]
        return value


def version_drift(raw: bytes, tags: dict[str, str]) -> DriftBaseline:
    """The route table's drift entry of a version from its baseline artifact and tags: the histograms, the input
    order (kubeforge.features, else the baseline's), and how its outputs read (task, classes)."""
    try:
        baseline = mc.Baseline.model_validate_json(raw)
    except ValidationError as err:
        return DriftBaseline(missing=f"{mc.BASELINE_ARTIFACT} is unreadable: {err.errors()[0]['msg']}")
    features = json_names(tags.get(mc.TAG_FEATURES)) or [h.name for h in baseline.features]
    task = tags.get(mc.TAG_TASK)
    try:
        drift = VersionDrift(
            features=features,
            baseline=baseline_text(baseline.features),
            task=cast(Task, task) if task in ("classification", "regression") else None,  # `in` does not narrow
            classes=[str(c) for c in _json_list(tags.get(mc.TAG_CLASSES)) or []] or None,
        )
    except ValidationError as err:
        return DriftBaseline(missing=f"its {mc.TAG_FEATURES} tag is unusable: {err.errors()[0]['msg']}")
    return DriftBaseline(drift)


def _json_list(tag: str | None) -> list[Any] | None:
    """A tag holding a JSON list, or None when it is missing or holds something else."""
    try:
        items = json.loads(tag) if tag else None
    except ValueError:
        return None
    return items if isinstance(items, list) else None


def json_names(tag: str | None) -> list[str] | None:
    """A tag holding a JSON list of names (kubeforge.features), or None."""
    names = _json_list(tag)
    return names if names is not None and all(isinstance(n, str) for n in names) else None

"""What a gateway replica asks of the others that serve the same route table (its ``peers``).

Each replica remembers the answers it gave (feedback's join store) and writes its own payload log, while the
gateway's Service sends a caller's labels, or a request for a data set, to any one of them. So a replica sent labels
for answers it does not remember asks its peers which of them do: every peer checks its part of the batch (a dry
run), and only when every part is accepted does each join its own, so a batch is still refused whole or applied
whole, whichever replicas answered it. Between the dry run and the join another batch may label the same answers;
each is joined once, by the batch applied first, and the other's caller is told it is unknown. A data set is every
replica's, gathered and merged by the one asked, which then checks the feature names asked for against those any
replica knows of: a version retired from the route table is known only to the replicas whose payload logs have it.

Requests between replicas carry PEER_HEADER: a peer answers from what it holds and asks no one further. Each
answers with its INSTANCE_HEADER, by which a replica recognises its own address among the peers (the route table
names every replica, itself included) and asks itself nothing more.

A peer that refuses the connection is gone (its pod deleted or its process restarting), and what it remembered
went with it, as on any gateway restart: it is passed over, its labels count as unknown, and the route table
drops it once the operator sees it gone. A peer that does not answer in time, or answers what no replica would,
may still hold answers: the request fails with a 503 naming it and nothing applied, to be sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from kubeforge.core.feedbackset import PEER_TIMEOUT_S, ROWS_LEFT_OUT_HEADER, rows_left_out

from .feedback import BadFeedback, Checked, DataSet
from .http1 import Client, ConnectionFailed, Reply

log = logging.getLogger(__name__)

PEER_HEADER = "kubeforge-peer"
INSTANCE_HEADER = "kubeforge-gateway-instance"
KNOWN_FEATURES_HEADER = "kubeforge-known-features"
"""On a peer's data set: the feature names of every version it knows of, a JSON list."""
TIMEOUT_S = 5.0
"""How long a peer may take to check or join a batch of labels."""
PASSED_ON = ("authorization",)
"""Request headers a peer needs to answer as the caller's replica would: the same tokens hold at every replica."""


class PeerUnavailable(Exception):
    """A peer did not answer, or not as a replica of the same gateway would; nothing was applied."""

    status = 503


class Peers:
    """The other replicas of this gateway, and what is asked of them."""

    def __init__(self, client: Client):
        self.client = client
        self.instance = os.urandom(8).hex()
        self.urls: tuple[str, ...] = ()
        self.me: str | None = None
        """This replica's own address among urls, once one of them answered with this replica's instance."""

    def load(self, urls: list[str]) -> None:
        self.urls = tuple(urls)

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(url for url in self.urls if url != self.me) if len(self.urls) > 1 else ()

    async def find(
        self, model: str, items: list[tuple[str, Any]], checked: Checked, headers: Mapping[str, str]
    ) -> dict[str, list[int]]:
        """Ask every peer about the items checked left unknown here; checked's results take their answers (an item
        joins at the first peer that remembers it). Returns the items each peer joins, by position in the batch.
        Raises BadFeedback as a peer refused its part (positions named as the caller sent them), PeerUnavailable
        when one cannot tell; nothing is applied anywhere before this returns."""
        unknown = [i for i, result in enumerate(checked.results) if result == "unknown"]
        peers = self.others
        if not unknown or not peers:
            return {}
        answers = await asyncio.gather(
            *(self._labels(url, model, items, unknown, headers, dry_run=True) for url in peers)
        )
        parts: dict[str, list[int]] = {}
        for url, answer in zip(peers, answers, strict=True):
            if answer is None:
                continue  # this replica itself, or one that is gone
            for i, result in zip(unknown, answer, strict=True):
                if result == "joined" and checked.results[i] != "joined":
                    checked.results[i] = "joined"
                    parts.setdefault(url, []).append(i)
                elif result == "expired" and checked.results[i] == "unknown":
                    checked.results[i] = "expired"
        return parts

    async def join(
        self,
        model: str,
        items: list[tuple[str, Any]],
        parts: dict[str, list[int]],
        checked: Checked,
        headers: Mapping[str, str],
    ) -> None:
        """Have each peer join its part, as found; checked's results take what each peer did join. An item another
        batch labelled at the peer since the dry run is not joined twice: the peer says so, and it is unknown. A
        peer that went away since it accepted, or now refuses its part, joined none of it (logged); one that does
        not answer may have joined it (logged, the results left as found)."""

        async def one(url: str, positions: list[int]) -> None:
            try:
                results = await self._labels(url, model, items, positions, headers, dry_run=False)
                why = "it is gone"
            except BadFeedback as err:
                results, why = None, str(err)
            except PeerUnavailable as err:
                log.error(
                    "model %s: %d labels sent to gateway replica %s may not have joined: %s",
                    model,
                    len(positions),
                    url,
                    err,
                )
                return
            if results is None:
                log.error(
                    "model %s: %d labels remembered by gateway replica %s not joined: %s",
                    model,
                    len(positions),
                    url,
                    why,
                )
            for i, result in zip(positions, results or ["unknown"] * len(positions), strict=True):
                checked.results[i] = result

        await asyncio.gather(*(one(url, positions) for url, positions in parts.items()))

    async def _labels(
        self,
        url: str,
        model: str,
        items: list[tuple[str, Any]],
        positions: list[int],
        headers: Mapping[str, str],
        dry_run: bool,
    ) -> list[str] | None:
        """One peer's result per item at positions; None when url is this replica or one that is gone."""
        labels = [{"id": items[i][0], "label": items[i][1]} for i in positions]
        body = json.dumps({"labels": labels, "positions": positions}).encode()
        path = f"/v2/models/{model}/feedback" + ("?dryRun=true" if dry_run else "")
        reply = await self._ask(url, "POST", path, body, headers, TIMEOUT_S)
        if reply is None:
            return None
        if reply.status_code in (400, 413, 422):
            raise BadFeedback(_message(reply), reply.status_code)
        try:
            results = reply.json()["results"] if reply.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            results = None
        if not isinstance(results, list) or len(results) != len(positions):
            raise PeerUnavailable(f"gateway replica {url} answered {reply.status_code}: {_message(reply)}")
        return [str(r) for r in results]

    async def datasets(self, path: str, headers: Mapping[str, str]) -> list[DataSet]:
        """Every peer's data set for path, but those gone; raises PeerUnavailable when one cannot give it."""
        peers = self.others
        replies = await asyncio.gather(*(self._ask(url, "GET", path, b"", headers, PEER_TIMEOUT_S) for url in peers))
        texts = []
        for url, reply in zip(peers, replies, strict=True):
            if reply is None:
                continue
            if reply.status_code != 200:
                raise PeerUnavailable(f"gateway replica {url} answered {reply.status_code}: {_message(reply)}")
            left_out = rows_left_out(reply.headers.get(ROWS_LEFT_OUT_HEADER))
            texts.append(DataSet(reply.content.decode(), left_out, _known(reply.headers.get(KNOWN_FEATURES_HEADER))))
        return texts

    async def _ask(
        self, url: str, method: str, path: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Reply | None:
        """A peer's reply; None when url turned out to be this replica (remembered: it is not asked again) or a
        replica that is gone (it refused the connection)."""
        sent = {k: v for k in PASSED_ON if (v := headers.get(k)) is not None}
        sent[PEER_HEADER] = "1"
        if body:
            sent["content-type"] = "application/json"
        try:
            reply = await self.client.request(method, url, path, body, sent, timeout)
        except ConnectionFailed as err:
            log.warning("gateway replica %s is gone (%s); what it remembered went with it: passed over", url, err)
            return None
        except (OSError, TimeoutError) as err:
            why = str(err) or type(err).__name__
            raise PeerUnavailable(
                f"gateway replica {url} did not answer ({why}); nothing was applied: try again"
            ) from err
        if reply.headers.get(INSTANCE_HEADER) == self.instance:
            self.me = url
            return None
        return reply


def _known(value: str | None) -> frozenset[str]:
    """The feature names a replica's data set says it knows of; none where it does not say (a replica of an
    earlier release, which checked the names it was asked for itself)."""
    try:
        names = json.loads(value or "[]")
    except ValueError:
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()


def _message(reply: Reply) -> str:
    """The error a peer gave, else its status."""
    try:
        return str(reply.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"status {reply.status_code}"

"""Tenants at the gateway in front of a real tritonserver: the access log names callers and never their tokens; a
tenant over its rate limit gets 429 with Retry-After while another tenant is served (both latencies printed);
limits hot-reload, and a token file with a bad limit is refused with the previous one kept; as the gateway fills,
batch callers are turned away before interactive ones."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time

import httpx
import pytest

from .conftest import body, send, table

pytestmark = pytest.mark.integration

ROW = [0.7, 0.1, 0.2, 0.3]
SECRETS = ("acme-7f3c2a9e51", "noisy-0b8d4e6f22", "calm-5a1c9e3b77", "other-3e9a0c4d18")


def tokens(noisy: str = "{requestsPerSecond: 20, burst: 10}") -> str:
    return f"""\
tenants:
  acme: {{}}
  noisy: {noisy}
  calm: {{maxConcurrent: 50}}
tokens:
  - {{name: acme-web, tenant: acme, token: {SECRETS[0]}, models: [clf]}}
  - {{name: noisy-batch, tenant: noisy, priority: batch, token: {SECRETS[1]}}}
  - {{name: calm-app, tenant: calm, token: {SECRETS[2]}}}
  - {{name: other-only, token: {SECRETS[3]}, models: [other]}}
"""


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what} not reached in time"
        time.sleep(0.1)
    return found


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_access_log_names_the_caller_and_never_the_token(gateway, triton, registered, tmp_path):
    path = tmp_path / "access" / "access.jsonl"
    gw = gateway(table(registered, triton.url), tokens=tokens(), args=("--access-log", str(path)))
    url = f"{gw.url}/v2/models/{registered.name}/infer"
    payload = json.loads(body([ROW]))
    answered = [
        httpx.post(url, json={**payload, "id": "order-42"}, headers=bearer(SECRETS[0])),
        httpx.post(url, json=payload, headers=bearer(SECRETS[0])),
        httpx.post(url, json=payload, headers=bearer("not-a-token-9d2e1f")),
        httpx.post(url, json=payload, headers=bearer(SECRETS[3])),
        httpx.post(f"{gw.url}/v2/models/other/infer", json=payload, headers=bearer(SECRETS[0])),
        httpx.get(f"{gw.url}/v2/models/{registered.name}", headers=bearer(SECRETS[0])),
    ]
    assert [r.status_code for r in answered] == [200, 200, 401, 403, 404, 200]
    httpx.get(f"{gw.url}/v2/health/ready")  # probes are not logged
    lines = _wait_for(lambda: path.exists() and len(_lines(path.read_text())) >= 6 and _lines(path.read_text()), "log")
    text = path.read_text()
    assert not any(secret in text for secret in (*SECRETS, "not-a-token-9d2e1f"))
    assert len(lines) == 6
    first = lines[0]
    assert first["request_id"] == "order-42" == answered[0].headers["kubeforge-request-id"]
    assert (first["identity"], first["tenant"], first["priority"]) == ("acme-web", "acme", "interactive")
    assert (first["model"], first["version"], first["role"], first["status"]) == (
        "clf",
        registered.stable,
        "stable",
        200,
    )
    assert first["latency_ms"] > 0 and first["bytes"] == len(answered[0].content) and first["request_bytes"] > 0
    assert first["time"].endswith("Z") and len(first["time"]) == len("2025-01-31T12:00:00.123Z")
    assert lines[1]["request_id"] == answered[1].headers["kubeforge-request-id"]
    unknown = lines[2]
    assert (unknown["status"], unknown["identity"], unknown["tenant"], unknown["version"]) == (401, None, None, None)
    assert (lines[3]["status"], lines[3]["identity"], lines[3]["tenant"]) == (403, "other-only", None)
    assert (lines[4]["status"], lines[4]["model"], lines[4]["identity"]) == (404, "other", None)
    metadata = lines[5]
    assert (metadata["method"], metadata["path"], metadata["identity"]) == ("GET", "/v2/models/clf", "acme-web")
    assert (metadata["status"], metadata["version"]) == (200, registered.stable)
    assert gw.metric("kubeforge_gateway_tenant_requests_total", tenant="acme", code="200") == 2
    assert gw.metric("kubeforge_gateway_tenant_requests_total", tenant="none", code="401") == 1


async def _calm(url: str, requests: int) -> list[float]:
    """The calm tenant's latencies over requests sent at concurrency 2."""
    payload, latencies = body([ROW]), []
    async with httpx.AsyncClient(timeout=30) as client:
        queue = iter(range(requests))

        async def caller() -> None:
            for _ in queue:
                start = time.perf_counter()
                resp = await client.post(url, content=payload, headers=bearer(SECRETS[2]))
                latencies.append(time.perf_counter() - start)
                assert resp.status_code == 200, resp.text

        await asyncio.gather(caller(), caller())
    return latencies


def _flood(url: str, stop: threading.Event, answers: list[httpx.Response]) -> None:
    """The noisy tenant: a batch caller sending as fast as 4 connections allow until stopped, from a thread and
    event loop of its own, so the calm tenant's client does not wait on it."""

    async def flood() -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def caller() -> None:
                while not stop.is_set():
                    answers.append(await client.post(url, content=body([ROW]), headers=bearer(SECRETS[1])))

            await asyncio.gather(*(caller() for _ in range(4)))

    asyncio.run(flood())


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def test_a_tenant_over_its_rate_limit_gets_429_while_another_tenant_is_served(gateway, triton, registered):
    gw = gateway(table(registered, triton.url), tokens=tokens(), args=("--access-log", "off"))
    url = f"{gw.url}/v2/models/{registered.name}/infer"
    send(url, [(body([ROW]), bearer(SECRETS[2]))] * 20)  # warm connections and caches
    alone = asyncio.run(_calm(url, 300))
    stop, noisy = threading.Event(), []
    flood = threading.Thread(target=_flood, args=(url, stop, noisy))
    start = time.monotonic()
    flood.start()
    try:
        beside = asyncio.run(_calm(url, 300))
    finally:
        stop.set()
        flood.join()
    seconds = time.monotonic() - start
    admitted = [r for r in noisy if r.status_code == 200]
    refused = [r for r in noisy if r.status_code == 429]
    print(
        f"\ncalm tenant alone:        p50 {_pct(alone, 50):.2f} ms, p99 {_pct(alone, 99):.2f} ms ({len(alone)} each)"
        f"\ncalm beside noisy tenant: p50 {_pct(beside, 50):.2f} ms, p99 {_pct(beside, 99):.2f} ms"
        f"\nnoisy tenant (20/s, burst 10) over {seconds:.2f} s: {len(admitted)} answered, {len(refused)} refused 429"
    )
    assert len(admitted) + len(refused) == len(noisy)
    assert 10 <= len(admitted) <= 10 + 20 * seconds + 1  # the bucket: its burst, then its rate
    assert refused, "the flood went over the limit"
    answer = refused[0]
    assert int(answer.headers["retry-after"]) >= 1
    detail = answer.json()
    assert (detail["tenant"], detail["reason"]) == ("noisy", "rate")
    assert detail["limit"] == {"requestsPerSecond": 20.0, "burst": 10}
    assert 0 < detail["retryAfterSeconds"] <= 0.05 and "noisy" in detail["error"]
    assert gw.metric("kubeforge_gateway_throttled_total", tenant="noisy", reason="rate") == len(refused)
    assert gw.metric("kubeforge_gateway_throttled_total", tenant="calm") == 0
    assert gw.metric("kubeforge_gateway_tenant_requests_total", tenant="calm", code="200") == 620
    assert gw.metric("kubeforge_gateway_tenant_requests_total", tenant="noisy", priority="batch", code="429") == len(
        refused
    )
    assert gw.metric("kubeforge_gateway_tenant_limit", tenant="noisy", limit="requests_per_second") == 20


def test_limits_hot_reload_and_a_bad_token_file_keeps_the_last_good_one(gateway, triton, registered):
    gw = gateway(table(registered, triton.url), tokens=tokens())  # the access log goes to stdout by default
    url = f"{gw.url}/v2/models/{registered.name}/infer"
    file = gw.workdir / "tokens"

    def reloaded(result: str, count: float) -> None:
        labels = {"file": "tokens", "result": result}
        _wait_for(lambda: gw.metric("kubeforge_route_table_reloads_total", **labels) == count, f"token reload {result}")

    def noisy(n: int) -> list[int]:
        return [r.status for r in send(url, [(body([ROW]), bearer(SECRETS[1]))] * n, concurrency=1)]

    assert noisy(5) == [200] * 5
    file.write_text(tokens(noisy="{requestsPerSecond: 0.01, burst: 1, maxConcurrent: 3}"))
    reloaded("ok", 2)
    statuses = noisy(3)  # the bucket carries over, cut to its new size of one
    assert statuses == [200, 429, 429]
    file.write_text(tokens(noisy="{requestsPerSecond: -5}"))
    reloaded("failed", 1)
    file.write_text("tenants: [\n")
    reloaded("failed", 2)
    assert "tenants.noisy.requestsPerSecond: Input should be greater than 0" in gw.log.read_text()
    assert "not valid YAML" in gw.log.read_text()
    refused = send(url, [(body([ROW]), bearer(SECRETS[1]))])[0]
    assert refused.status == 429  # the last good limits hold
    assert json.loads(refused.content)["limit"] == {"requestsPerSecond": 0.01, "burst": 1}
    assert send(url, [(body([ROW]), bearer(SECRETS[2]))])[0].status == 200
    file.write_text(f"{SECRETS[1]}\n")  # back to the original format: no tenants, no limits
    reloaded("ok", 3)
    assert noisy(3) == [200] * 3
    logged = _wait_for(lambda: [x for x in _lines(gw.log.read_text()) if x.get("identity") == "line-1"], "stdout")
    assert logged[0]["tenant"] is None and logged[0]["status"] == 200
    assert not any(secret in gw.log.read_text() for secret in SECRETS)


def test_batch_callers_are_turned_away_first_when_the_gateway_fills(gateway, triton, registered):
    hung = socket.socket()  # accepts connections into its backlog and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    try:
        routes = table(registered, triton.url, canary=(f"http://127.0.0.1:{hung.getsockname()[1]}", 0))
        limits = "gateway: {maxConcurrent: 3, batchMaxConcurrent: 1}\n" + tokens()
        gw = gateway(routes, tokens=limits, args=("--access-log", "off"))
        url = f"{gw.url}/v2/models/{registered.name}/infer"
        stuck = f"{gw.url}/v2/models/{registered.name}/versions/{registered.canary}/infer"  # held ~2 s, then 503
        held: list[threading.Thread] = []

        def hold(secret: str, in_flight: int) -> None:
            thread = threading.Thread(
                target=httpx.post,
                args=(stuck,),
                kwargs={"content": body([ROW]), "headers": bearer(secret), "timeout": 30},
            )
            thread.start()
            held.append(thread)
            _wait_for(lambda: gw.metric("kubeforge_gateway_in_flight") == in_flight, f"{in_flight} in flight")

        def status(secret: str) -> httpx.Response:
            return httpx.post(url, content=body([ROW]), headers=bearer(secret))

        hold(SECRETS[1], 1)  # a batch request in flight: batchMaxConcurrent
        refused = status(SECRETS[1])
        assert refused.status_code == 429 and refused.json()["reason"] == "overload"
        assert refused.json()["limit"] == {"batchMaxConcurrent": 1} and refused.json()["tenant"] == "noisy"
        assert status(SECRETS[2]).status_code == 200  # interactive callers keep the room above it
        hold(SECRETS[2], 2)
        hold(SECRETS[0], 3)
        full = status(SECRETS[2])
        assert full.status_code == 429 and full.json()["limit"] == {"maxConcurrent": 3}
        for thread in held:
            thread.join()
        assert status(SECRETS[1]).status_code == 200  # room again once they are done
        assert gw.metric("kubeforge_gateway_throttled_total", reason="overload") == 2
    finally:
        hung.close()


def test_a_caller_that_goes_away_mid_request_gives_its_tenant_slot_back(gateway, triton, registered, tmp_path):
    """A caller that stalls mid-body holds its tenant's one slot; once it hangs up, the slot is free again and the
    access log says what became of the request: nothing was sent back."""
    path = tmp_path / "access.jsonl"
    gw = gateway(table(registered, triton.url), tokens(noisy="{maxConcurrent: 1}"), ("--access-log", str(path)))
    url = f"{gw.url}/v2/models/{registered.name}/infer"
    head = f"POST /v2/models/{registered.name}/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRETS[1]}\r\n"
    stalled = socket.create_connection(("127.0.0.1", gw.port))
    stalled.sendall(f'{head}Content-Length: 1000\r\n\r\n{{"inputs": ['.encode())
    _wait_for(lambda: gw.metric("kubeforge_gateway_in_flight") == 1, "the stalled request admitted")
    refused = httpx.post(url, content=body([ROW]), headers=bearer(SECRETS[1]))
    assert refused.status_code == 429 and refused.json()["limit"] == {"maxConcurrent": 1}
    stalled.close()
    _wait_for(lambda: gw.metric("kubeforge_gateway_in_flight") == 0, "the slot given back")
    assert httpx.post(url, content=body([ROW]), headers=bearer(SECRETS[1])).status_code == 200
    lines = _wait_for(lambda: path.exists() and len(found := _lines(path.read_text())) == 3 and found, "log")
    assert [(x["status"], x["tenant"]) for x in lines] == [(429, "noisy"), (400, "noisy"), (200, "noisy")]
    assert lines[1]["bytes"] == 0 and lines[2]["bytes"] > 0

"""How inference requests are answered outside the web framework: what uvicorn refuses stays refused, and what
fails in the gateway is answered and accounted for like any other answer."""

from __future__ import annotations

import asyncio
import json

import uvicorn
import yaml
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from kubeforge.serving.gateway import Gateway, Settings
from kubeforge.serving.inference_protocol import protocol
from kubeforge.serving.metrics import REGISTRY

REQUEST = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: gateway\r\ncontent-length: 2\r\n\r\n{}"


async def other_requests(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"not inference", 404)(scope, receive, send)


def test_requests_over_uvicorns_concurrency_limit_get_its_503_and_never_reach_the_gateway() -> None:
    inferred: list[str] = []

    async def infer(path: str, headers: list[tuple[bytes, bytes]], receive: Receive):
        inferred.append(path)
        while (await receive()).get("more_body"):
            pass
        return Response(b"{}", 200, media_type="application/json"), lambda sent: None

    async def scenario() -> tuple[bytes, bytes]:
        config = uvicorn.Config(
            other_requests, host="127.0.0.1", port=0, http=protocol(infer), limit_concurrency=2, lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        answers = []
        for _ in range(2):  # the first connection stays open, so the second is one over the limit
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            answers.append(await reader.readuntil(b"\r\n\r\n"))
        server.should_exit = True
        await serving
        return answers[0], answers[1]

    within, over = asyncio.run(scenario())
    assert within.startswith(b"HTTP/1.1 200 ")
    assert over.startswith(b"HTTP/1.1 503 "), over
    assert inferred == ["/v2/models/m/infer"]


def test_a_fault_in_the_gateway_is_a_500_the_access_log_and_the_tenant_count_see(tmp_path, monkeypatch) -> None:
    """No request reaches a gateway bug on purpose, so the test stands one in where the gateway forwards."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "clf": {
                        "versions": [{"version": "1", "role": "stable", "url": "http://127.0.0.1:9", "weight": 100}]
                    }
                }
            }
        )
    )
    access = tmp_path / "access.log"
    gw = Gateway(Settings(routes, access_log=str(access)))
    gw.reload()

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw, "_forward", broken)

    async def body() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    before = tenant_requests("500")
    response, settle = asyncio.run(gw.infer("/v2/models/clf/infer", [], body))
    settle(len(response.body))
    gw.access.close()
    assert response.status_code == 500 and b"internal error in the gateway" in response.body
    assert gw.admission.in_flight == 0, "the request's admission was given back"
    assert tenant_requests("500") == before + 1
    [entry] = [json.loads(text) for text in access.read_text().splitlines()]
    assert (entry["status"], entry["model"], entry["bytes"]) == (500, "clf", len(response.body)), entry


def tenant_requests(code: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "kubeforge_gateway_tenant_requests_total", {"tenant": "none", "priority": "interactive", "code": code}
        )
        or 0.0
    )

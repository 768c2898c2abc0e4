"""The least a Python hop in front of Triton can do: the floor the gateway's figures are read against.

An asyncio server on uvloop that parses each request with httptools, forwards its body to one Triton path with the
gateway's own upstream client and writes the answer back in one send: no routing, checks, metrics or logs. What it
adds over calling Triton directly is what any Python hop pays on this machine (two loopback round trips, their
wake-ups and the interpreter between them), whatever its code. bench_gateway starts it beside the gateways:
.venv/bin/python -m tests.benchmarks.forwarder PORT UPSTREAM_URL TRITON_PATH
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

from kubeforge.serving.http1 import Client

HEADERS = {"Content-Type": "application/json"}


class Forwarder(asyncio.Protocol):
    def __init__(self, client: Client, upstream: str, path: str) -> None:
        self.client, self.upstream, self.path = client, upstream, path
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self.forward(body))

    async def forward(self, body: bytes) -> None:
        reply = await self.client.request("POST", self.upstream, self.path, body, HEADERS)
        head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        self.transport.write(head % (reply.status_code, len(reply.content)) + reply.content)


async def main(port: int, upstream: str, path: str) -> None:
    client = Client()
    server = await asyncio.get_running_loop().create_server(
        lambda: Forwarder(client, upstream, path), "127.0.0.1", port
    )
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))

"""A lean load generator's HTTP client: POST a JSON body, read the server-sent events of the answer.

The benchmarks run the client on the same two cores as the server it measures, so every CPU second the
client spends is taken from the engine. httpx parses each streamed token's event through several layers
of Python (h11, its byte streams, line decoding); this reads HTTP/1.1 chunked transfer encoding straight
off an asyncio stream and hands back each event's `data`: half the client's CPU, and what that buys the
served path, are in the README ("The served path against the engine alone"). Plain HTTP only; lines end
in "\n", as our frontend's and vLLM's events are written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    """The server answered with a status other than 200."""


async def post_events(base_url: str, path: str, body: dict[str, object]) -> AsyncIterator[bytes]:
    """The `data` field of each event in the answer to POST base_url + path, up to "[DONE]" or the end."""
    url = urlsplit(base_url)
    if url.scheme != "http":
        raise ValueError(f"only http:// servers are read, got {base_url!r}")
    host, port = url.hostname or "localhost", url.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        payload = json.dumps(body).encode("utf-8")
        head = (
            f"POST {url.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + payload)
        status, headers = await _read_head(reader)
        if status != 200:
            raise HTTPStatusError(f"HTTP {status}: {(await reader.read()).decode('utf-8', 'replace')}")
        chunks = _chunks(reader) if headers.get("transfer-encoding") == "chunked" else _until_close(reader)
        pending = b""
        async for chunk in chunks:
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                # An event's data lines join with newlines (the SSE format); comments and other fields go.
                data = b"\n".join(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
                if data == b"[DONE]":
                    return
                if data:
                    yield data
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without answering")
    status = int(status_line.split(b" ", 2)[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return status, headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _until_close(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(65536):
        yield data

"""The benchmarks' lean SSE client reads what uvicorn streams, events split anywhere, and refuses errors."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from benchmarks.sse_client import HTTPStatusError, post_events


def sse_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo", response_model=None)
    async def echo(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        if body["count"] < 0:
            return JSONResponse({"error": {"message": "count must be >= 0"}}, status_code=400)

        async def events() -> AsyncIterator[str]:
            for index in range(body["count"]):
                yield f"data: {json.dumps({'index': index, 'text': 'é' * index})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def uvicorn_url() -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(sse_app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start in 10 s"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


async def collect(base_url: str, path: str, body: dict[str, object]) -> list[bytes]:
    return [data async for data in post_events(base_url, path, body)]


def test_reads_every_event_uvicorn_streams(uvicorn_url: str) -> None:
    events = asyncio.run(collect(uvicorn_url, "/echo", {"count": 50}))
    assert [json.loads(data) for data in events] == [{"index": i, "text": "é" * i} for i in range(50)]


def test_an_error_status_is_raised_with_its_body(uvicorn_url: str) -> None:
    with pytest.raises(HTTPStatusError, match="HTTP 400.*count must be"):
        asyncio.run(collect(uvicorn_url, "/echo", {"count": -1}))


def test_events_split_across_chunks_and_an_answer_without_chunking() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        stream = b"data: one\n\ndata: two\n\n: a comment\n\ndata: thr\ndata: ee\n\ndata: [DONE]\n\n"
        # Cut inside a field name, inside a value, and between the two newlines that end an event.
        cuts = [0, 7, stream.index(b"two") + 4, stream.index(b"comment") + 3, len(stream)]
        pieces = [stream[start:end] for start, end in zip(cuts[:-1], cuts[1:], strict=True)]
        assert pieces[1].endswith(b"two\n") and pieces[2].startswith(b"\n")
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))[15:])
            await reader.readexactly(length)
            if b"chunked" in head.split(b"\r\n")[0]:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: a\n\ndata: b\n\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            split = await collect(f"http://127.0.0.1:{port}", "/chunked", {})
            closed = await collect(f"http://127.0.0.1:{port}", "/plain", {})
        return split, closed

    split, closed = asyncio.run(scenario())
    # Comments dropped; an event's data lines joined by newlines.
    assert split == [b"one", b"two", b"thr\nee"]
    assert closed == [b"a", b"b"]

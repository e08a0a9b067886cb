"""The client side of the load tests and of the full-scale load benchmark (benchmarks.load_bench): streamed
greedy chats whose every token is accounted for, and the server-side state they must leave behind.

Exactness is checked per token: each stream carries its logprobs (one entry per generated token) and its
usage, so a lost or repeated token shows as a count or text mismatch.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.integration.triton_requests import scrape_metric

MODEL_NAME = "SmolLM2-135M-Instruct"
TOPICS = ["the sea", "a cat", "mountains", "coffee", "trains", "the moon", "bread", "rain"]


def chat_body(topic: str, stream: bool, max_tokens: int = 24) -> dict:
    request = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"Write about {topic}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        request |= {"logprobs": True, "stream_options": {"include_usage": True}}
    return request


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def greedy_answer(client: httpx.AsyncClient, api_key: str | None, topic: str, max_tokens: int = 24) -> str:
    """The non-streamed answer to a topic's chat (the reference its streams are compared with)."""
    reply = await client.post(
        "/chat/completions", json=chat_body(topic, False, max_tokens), headers=auth_headers(api_key)
    )
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


@dataclass
class StreamedChoice:
    text: str
    # Each generated token's own text, from the logprobs of the chunks.
    tokens: list[str]
    completion_tokens: int
    finish_reason: str | None


async def streamed_choice(
    client: httpx.AsyncClient, api_key: str | None, topic: str, max_tokens: int = 24
) -> StreamedChoice:
    """One streamed chat; raises AssertionError on a refusal or an error frame."""
    parts: list[str] = []
    tokens: list[str] = []
    usage, finish = 0, None
    async with client.stream(
        "POST", "/chat/completions", json=chat_body(topic, True, max_tokens), headers=auth_headers(api_key)
    ) as reply:
        assert reply.status_code == 200, (reply.status_code, await reply.aread())
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            assert "error" not in event, event
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                parts.append(choice["delta"].get("content") or "")
                tokens.extend(entry["token"] for entry in (choice.get("logprobs") or {}).get("content") or [])
                finish = choice.get("finish_reason") or finish
    return StreamedChoice("".join(parts), tokens, usage, finish)


async def disconnect_storm(base_url: str, api_key: str | None, streams: int, seed: int = 7) -> None:
    """Open `streams` long streams at once and drop each after a random 1-12 chunks."""
    rng = random.Random(seed)
    headers = auth_headers(api_key)

    async def drop_after(client: httpx.AsyncClient, index: int, chunks: int) -> None:
        request = chat_body(TOPICS[index % len(TOPICS)], True, max_tokens=400)
        async with client.stream("POST", "/chat/completions", json=request, headers=headers) as reply:
            seen = 0
            async for _line in reply.aiter_lines():
                seen += 1
                if seen >= chunks:
                    break  # leaving the block closes the connection mid-stream

    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(drop_after(client, index, rng.randint(1, 12)) for index in range(streams)))


def stream_problem(choice: StreamedChoice) -> str | None:
    """What is wrong with a finished stream (a lost or repeated token, no finish), or None."""
    if choice.finish_reason not in ("stop", "length"):
        return f"finish_reason {choice.finish_reason!r}"
    if not 0 < len(choice.tokens) == choice.completion_tokens:
        return f"{len(choice.tokens)} token entries for usage.completion_tokens={choice.completion_tokens}"
    joined = "".join(choice.tokens)
    # A token splitting a character has no text of its own: then only the counts can be compared.
    if "\ufffd" not in joined and joined != choice.text:
        return f"tokens join to {joined!r}, content is {choice.text!r}"
    return None


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (tritonserver and its stubs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), "0")
        total += int(rss) * 1024
    return total


def engine_idle(metrics_url: str, timeout: float = 30.0) -> bool:
    """Whether the engine reaches zero running and waiting requests and zero KV blocks in use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
        if (
            scrape_metric(text, "llm_num_requests_running") == 0
            and scrape_metric(text, "llm_num_requests_waiting") == 0
            and scrape_metric(text, "llm_kv_cache_usage_ratio") == 0
        ):
            return True
        time.sleep(0.25)
    return False

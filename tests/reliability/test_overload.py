"""Overload: beyond the engine's bounded waiting queue, clients get 429 + Retry-After, never a hang or an
unbounded queue, and every admitted request still completes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.reliability.conftest import SMALL_PROFILE, PrivateStack, engine_metric

pytestmark = pytest.mark.slow

MODEL_NAME = "SmolLM2-135M-Instruct"


async def one_completion(client: httpx.AsyncClient, index: int) -> httpx.Response:
    body = {
        "model": MODEL_NAME,
        "prompt": f"Story number {index}:",
        "max_tokens": 48,
        "ignore_eos": True,
        "temperature": 0,
    }
    return await client.post("/completions", json=body)


def test_a_full_queue_answers_429_with_retry_after(private_stack: PrivateStack) -> None:
    capacity = SMALL_PROFILE["max_num_seqs"] + SMALL_PROFILE["max_waiting_requests"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=private_stack.frontend.base_url, timeout=120) as client:
            return await asyncio.gather(*(one_completion(client, index) for index in range(3 * capacity)))

    responses = asyncio.run(burst())
    refused = [response for response in responses if response.status_code == 429]
    served = [response for response in responses if response.status_code == 200]
    assert refused and len(served) >= capacity, [response.status_code for response in responses]
    assert len(refused) + len(served) == len(responses)
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and "queue is full" in error["message"]
    for response in served:
        assert response.json()["usage"]["completion_tokens"] == 48
    # Nothing is left behind, and the next request is served.
    assert engine_metric(private_stack.triton, "llm_num_requests_waiting") == 0
    after = asyncio.run(_single(private_stack))
    assert after.status_code == 200


async def _single(stack: PrivateStack) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.frontend.base_url, timeout=120) as client:
        return await one_completion(client, 0)

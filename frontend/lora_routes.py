"""Thin routes of vLLM's runtime LoRA updating; the logic lives in `frontend.serving.lora`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from frontend.protocol.models import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from frontend.serving.lora import LoRAAdapterHandler


def build_lora_router(handler: LoRAAdapterHandler) -> APIRouter:
    router = APIRouter()

    # vLLM answers both with a line of plain text.
    @router.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request) -> Response:
        return PlainTextResponse(await handler.load(body, f"lora-{request.state.request_id}"))

    @router.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> Response:
        return PlainTextResponse(await handler.unload(body))

    return router

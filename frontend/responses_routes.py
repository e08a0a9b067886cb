"""Thin FastAPI routes of the Responses API; the logic lives in `frontend.serving.responses`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from frontend.protocol.responses import ResponsesRequest, ToolOutputsRequest
from frontend.routes import EventStreamResponse, until_disconnect
from frontend.serving.responses import ResponsesHandler, new_response_id


def _respond(result: BaseModel | AsyncIterator[str]) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json"))
    return EventStreamResponse(result, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def build_responses_router(responses: ResponsesHandler) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        return _respond(await until_disconnect(request, responses.create(body, new_response_id())))

    @router.get("/v1/responses/{response_id}")
    async def retrieve_response(
        response_id: str,
        stream: bool = False,
        starting_after: int | None = Query(default=None, ge=-1),
    ) -> Response:
        return _respond(await responses.retrieve(response_id, stream, starting_after))

    @router.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> Response:
        return _respond(await responses.delete(response_id))

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str) -> Response:
        return _respond(await responses.cancel(response_id))

    @router.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        after: str | None = None,
        before: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        return _respond(await responses.input_items(response_id, after, before, limit, order))

    @router.post("/v1/responses/{response_id}/tool_outputs")
    async def submit_tool_outputs(response_id: str, body: ToolOutputsRequest, request: Request) -> Response:
        work = responses.submit_tool_outputs(response_id, body, new_response_id())
        return _respond(await until_disconnect(request, work))

    return router

"""Thin FastAPI routes of the Responses API; the logic lives in `frontend.serving.responses`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from frontend.protocol.responses import ResponsesRequest, ToolOutputsRequest
from frontend.routes import respond, until_disconnect
from frontend.serving.responses import ResponsesHandler, new_response_id


def build_responses_router(responses: ResponsesHandler) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        return respond(await until_disconnect(request, responses.create(body, new_response_id())))

    @router.get("/v1/responses/{response_id}")
    async def retrieve_response(
        response_id: str,
        stream: bool = False,
        starting_after: int | None = Query(default=None, ge=-1),
    ) -> Response:
        return respond(await responses.retrieve(response_id, stream, starting_after))

    @router.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> Response:
        return respond(await responses.delete(response_id))

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str) -> Response:
        return respond(await responses.cancel(response_id))

    @router.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        after: str | None = None,
        before: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        return respond(await responses.input_items(response_id, after, before, limit, order))

    @router.post("/v1/responses/{response_id}/tool_outputs")
    async def submit_tool_outputs(response_id: str, body: ToolOutputsRequest, request: Request) -> Response:
        work = responses.submit_tool_outputs(response_id, body, new_response_id())
        return respond(await until_disconnect(request, work))

    return router

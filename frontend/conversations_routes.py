"""Thin FastAPI routes of the Conversations API; the logic lives in `frontend.serving.conversations`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from frontend.errors import bad_request
from frontend.protocol.conversations import (
    ConversationCreateRequest,
    ConversationUpdateRequest,
    ItemsCreateRequest,
)
from frontend.routes import respond
from frontend.serving.conversations import ConversationsHandler


def _no_includes(request: Request) -> None:
    """OpenAI's `include` (the SDK sends `include[]=...`) adds tool outputs and logprobs that conversation
    items here never hold."""
    include = request.query_params.getlist("include") + request.query_params.getlist("include[]")
    if include:
        raise bad_request(f"include is not supported on conversation items: {include}", param="include")


def build_conversations_router(conversations: ConversationsHandler) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/conversations")
    async def create_conversation(body: ConversationCreateRequest) -> Response:
        return respond(await conversations.create(body))

    @router.get("/v1/conversations/{conversation_id}")
    async def retrieve_conversation(conversation_id: str) -> Response:
        return respond(await conversations.retrieve(conversation_id))

    @router.post("/v1/conversations/{conversation_id}")
    async def update_conversation(conversation_id: str, body: ConversationUpdateRequest) -> Response:
        return respond(await conversations.update(conversation_id, body))

    @router.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str) -> Response:
        return respond(await conversations.delete(conversation_id))

    @router.post("/v1/conversations/{conversation_id}/items")
    async def create_items(conversation_id: str, body: ItemsCreateRequest, request: Request) -> Response:
        _no_includes(request)
        return respond(await conversations.add_items(conversation_id, body))

    @router.get("/v1/conversations/{conversation_id}/items")
    async def list_items(
        conversation_id: str,
        request: Request,
        after: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        _no_includes(request)
        return respond(await conversations.list_items(conversation_id, after, limit, order))

    @router.get("/v1/conversations/{conversation_id}/items/{item_id}")
    async def retrieve_item(conversation_id: str, item_id: str, request: Request) -> Response:
        _no_includes(request)
        return respond(await conversations.item(conversation_id, item_id))

    @router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
    async def delete_item(conversation_id: str, item_id: str) -> Response:
        return respond(await conversations.delete_item(conversation_id, item_id))

    return router

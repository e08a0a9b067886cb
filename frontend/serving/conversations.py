"""/v1/conversations: OpenAI's Conversations API over the response store, and the two things a response
asks of a conversation (`conversation` on /v1/responses): its items as the new turn's history, and the
turn's input and output items appended once the response has ended (completed or incomplete).

vLLM has no Conversations API; a conversation here lives in the same store as the responses (SQLite on
one host, PostgreSQL shared by replicas) and belongs to the tenant that created it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

from frontend.errors import APIError, bad_request
from frontend.protocol.conversations import (
    Conversation,
    ConversationCreateRequest,
    ConversationUpdateRequest,
    DeletedConversation,
    ItemsCreateRequest,
)
from frontend.protocol.responses import ITEM, Item, ItemList
from frontend.response_store import JSON, ResponseStore, StoredConversation
from frontend.serving.context import unix_now
from frontend.serving.item_pages import item_page
from frontend.serving.responses_input import with_ids
from frontend.tenancy import current_tenant, visible_to_current_tenant


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def not_found(conversation_id: str) -> APIError:
    return APIError(
        404, f"Conversation with id '{conversation_id}' not found.", "invalid_request_error", None, "not_found"
    )


def check_unique_ids(earlier: list[Item], new: list[Item], param: str) -> None:
    """An id names one item of a conversation: refused again (a response's output sent back as input, say),
    as OpenAI refuses it."""
    seen = {item.id for item in earlier}
    for item in new:
        if item.id in seen:
            raise bad_request(f"Duplicate item found with id {item.id}.", param=param)
        seen.add(item.id)


def _stored_items(items: list[Item]) -> list[JSON]:
    return [item.model_dump(mode="json") for item in items]


class ConversationsHandler:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def create(self, request: ConversationCreateRequest) -> Conversation:
        conversation = Conversation(id=new_conversation_id(), created_at=unix_now(), metadata=request.metadata or {})
        given = with_ids(request.items or [])
        check_unique_ids([], given, "items")
        items = _stored_items(given)
        body = conversation.model_dump(mode="json")
        await asyncio.to_thread(self.store.create_conversation, body, items, current_tenant.get())
        return conversation

    async def retrieve(self, conversation_id: str) -> Conversation:
        return Conversation.model_validate((await self._stored(conversation_id)).body)

    async def update(self, conversation_id: str, request: ConversationUpdateRequest) -> Conversation:
        conversation = await self.retrieve(conversation_id)
        conversation.metadata = request.metadata
        if not await asyncio.to_thread(self.store.update_conversation, conversation.model_dump(mode="json")):
            raise not_found(conversation_id)
        return conversation

    async def delete(self, conversation_id: str) -> DeletedConversation:
        await self._stored(conversation_id)
        if not await asyncio.to_thread(self.store.delete_conversation, conversation_id):
            raise not_found(conversation_id)
        return DeletedConversation(id=conversation_id)

    async def add_items(self, conversation_id: str, request: ItemsCreateRequest) -> ItemList:
        """The items appended (one at least: ItemsCreateRequest), with the ids and statuses they are stored with."""
        items = with_ids(request.items)
        check_unique_ids(await self._items(conversation_id), items, "items")
        if not await asyncio.to_thread(self.store.add_conversation_items, conversation_id, _stored_items(items)):
            raise not_found(conversation_id)
        return ItemList(data=items, first_id=items[0].id, last_id=items[-1].id, has_more=False)

    async def list_items(
        self, conversation_id: str, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> ItemList:
        """OpenAI's cursor pagination over a conversation's items (newest first by default)."""
        items = await self._items(conversation_id)
        return item_page(items, after, None, limit, order, f"conversation '{conversation_id}'")

    async def item(self, conversation_id: str, item_id: str) -> Item:
        for item in await self._items(conversation_id):
            if item.id == item_id:
                return item
        raise _item_not_found(conversation_id, item_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> Conversation:
        """The conversation the item was taken out of (as OpenAI answers)."""
        conversation = await self.retrieve(conversation_id)
        if not await asyncio.to_thread(self.store.delete_conversation_item, conversation_id, item_id):
            raise _item_not_found(conversation_id, item_id)
        return conversation

    # ---- what a response asks of its conversation ---------------------------------------------------------

    async def history(self, conversation_id: str) -> list[Item]:
        """Every item so far, oldest first: the history a response in this conversation continues."""
        if await self._lookup(conversation_id) is None:
            raise bad_request(f"Conversation '{conversation_id}' was not found.", param="conversation")
        return await self._read_items(conversation_id)

    # ---- lookups ------------------------------------------------------------------------------------------

    async def _lookup(self, conversation_id: str) -> StoredConversation | None:
        """The stored conversation, or None when there is none or another tenant owns it (answered exactly
        like an unknown id)."""
        found = await asyncio.to_thread(self.store.get_conversation, conversation_id)
        if found is None or not visible_to_current_tenant(found.owner):
            return None
        return found

    async def _stored(self, conversation_id: str) -> StoredConversation:
        found = await self._lookup(conversation_id)
        if found is None:
            raise not_found(conversation_id)
        return found

    async def _items(self, conversation_id: str) -> list[Item]:
        await self._stored(conversation_id)
        return await self._read_items(conversation_id)

    async def _read_items(self, conversation_id: str) -> list[Item]:
        raw = await asyncio.to_thread(self.store.conversation_items, conversation_id)
        return [ITEM.validate_python(item) for item in raw]


def _item_not_found(conversation_id: str, item_id: str) -> APIError:
    return APIError(
        404,
        f"Item with id '{item_id}' not found in conversation '{conversation_id}'.",
        "invalid_request_error",
        None,
        "not_found",
    )

"""/v1/conversations (OpenAI's Conversations API): a conversation object and its items, which are the
Responses API's items (frontend.protocol.responses), so a conversation holds exactly what a response takes
as input and gives as output."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from frontend.protocol.responses import Item

# OpenAI's limits: items added by one request, and metadata pairs.
MAX_ITEMS_PER_REQUEST = 20
MAX_METADATA_PAIRS = 16
# OpenAI's bounds: keys up to 64 characters, values up to 512.
Metadata = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


class ConversationCreateRequest(BaseModel):
    """POST /v1/conversations: optional first items and metadata."""

    model_config = ConfigDict(extra="forbid")

    items: list[Item] | None = Field(default=None, max_length=MAX_ITEMS_PER_REQUEST)
    metadata: Metadata | None = Field(default=None, max_length=MAX_METADATA_PAIRS)


class ConversationUpdateRequest(BaseModel):
    """POST /v1/conversations/{id}: the metadata, replaced whole."""

    model_config = ConfigDict(extra="forbid")

    metadata: Metadata = Field(max_length=MAX_METADATA_PAIRS)


class ItemsCreateRequest(BaseModel):
    """POST /v1/conversations/{id}/items: items appended in order."""

    model_config = ConfigDict(extra="forbid")

    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: Metadata = Field(default_factory=dict)


class DeletedConversation(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True

"""OpenAI's Conversations API (which vLLM lacks) and responses that belong to a conversation, against a real
tritonserver + frontend through the official OpenAI SDK."""

from __future__ import annotations

import time

import openai
import pytest
from openai.types.responses import Response

from tests.frontend.conftest import MODEL_NAME
from tests.frontend_responses.conftest import plain
from tests.frontend_responses.test_responses_sdk import WEATHER_TOOL

pytestmark = pytest.mark.slow


def item_ids(client: openai.OpenAI, conversation_id: str) -> list[str]:
    return [item.id for item in client.conversations.items.list(conversation_id, order="asc")]  # type: ignore[union-attr]


def test_conversation_objects_and_items(client: openai.OpenAI) -> None:
    created = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My name is Ada."}], metadata={"topic": "names"}
    )
    assert created.id.startswith("conv_") and created.object == "conversation"
    assert plain(client.conversations.retrieve(created.id)) == plain(created)
    updated = client.conversations.update(created.id, metadata={"topic": "greetings"})
    assert updated.metadata == {"topic": "greetings"}
    assert client.conversations.retrieve(created.id).metadata == {"topic": "greetings"}

    first = client.conversations.items.list(created.id)
    assert len(first.data) == 1 and first.data[0].type == "message"
    added = client.conversations.items.create(
        created.id,
        items=[
            {"type": "message", "role": "assistant", "content": "Hello Ada."},
            {"type": "message", "role": "user", "content": "What is my name?"},
        ],
    )
    assert [item.type for item in added.data] == ["message", "message"]
    ids = item_ids(client, created.id)
    assert ids == [first.data[0].id, *(item.id for item in added.data)]
    # Newest first by default, paged by cursor.
    page = client.conversations.items.list(created.id, limit=2)
    assert [item.id for item in page.data] == ids[::-1][:2] and page.has_more
    rest = client.conversations.items.list(created.id, limit=2, after=ids[1])
    assert [item.id for item in rest.data] == [ids[0]] and not rest.has_more
    assert plain(client.conversations.items.retrieve(ids[1], conversation_id=created.id)) == plain(added.data[0])

    after_delete = client.conversations.items.delete(ids[1], conversation_id=created.id)
    assert after_delete.id == created.id
    assert item_ids(client, created.id) == [ids[0], ids[2]]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(ids[1], conversation_id=created.id)

    deleted = client.conversations.delete(created.id)
    assert deleted.deleted and deleted.id == created.id and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(created.id)


def test_responses_in_a_conversation_continue_it_as_a_response_chain_would(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    settings = {"model": MODEL_NAME, "temperature": 0, "max_output_tokens": 12}
    first = client.responses.create(conversation=conversation.id, input="Name a fruit.", **settings)
    assert first.conversation is not None and first.conversation.id == conversation.id
    second = client.responses.create(conversation={"id": conversation.id}, input="Name another.", **settings)

    # The same two turns as a previous_response_id chain: the same prompt, so the same answers.
    chained_first = client.responses.create(input="Name a fruit.", **settings)
    chained_second = client.responses.create(
        previous_response_id=chained_first.id, input="Name another.", **settings
    )
    assert second.output_text == chained_second.output_text
    assert second.usage is not None and chained_second.usage is not None
    assert second.usage.input_tokens == chained_second.usage.input_tokens

    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.type for item in items] == ["message"] * 4
    assert [item.role for item in items] == ["user", "assistant", "user", "assistant"]  # type: ignore[union-attr]
    assert [items[1].id, items[3].id] == [first.output[0].id, second.output[0].id]

    # Streamed turns join it as well, once they end (here at max_output_tokens: incomplete).
    events = list(client.responses.create(conversation=conversation.id, input="And one more.", stream=True, **settings))
    ended = events[-1]
    assert ended.type in ("response.completed", "response.incomplete")
    assert item_ids(client, conversation.id)[-1] == ended.response.output[0].id
    assert len(item_ids(client, conversation.id)) == 6


def test_conversation_misuse_is_refused(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    earlier = client.responses.create(model=MODEL_NAME, input="Hi.", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=MODEL_NAME, input="Hi.", conversation=conversation.id, previous_response_id=earlier.id
        )
    assert refused.value.body["param"] == "conversation"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL_NAME, input="Hi.", conversation="conv_missing")
    assert refused.value.body["param"] == "conversation"  # type: ignore[index]
    # A failed turn adds nothing: here one refused before it ran (an unknown model).
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi.", conversation=conversation.id)
    assert item_ids(client, conversation.id) == []
    with pytest.raises(openai.BadRequestError) as refused:
        client.conversations.items.list(conversation.id, include=["message.output_text.logprobs"])
    assert refused.value.body["param"] == "include"  # type: ignore[index]
    # An id names one item of a conversation: sent again, it is refused, whichever way it comes.
    added = client.conversations.items.create(conversation.id, items=[{"role": "user", "content": "Hello."}])
    again = {"type": "message", "id": added.data[0].id, "role": "user", "content": "Hello again."}
    with pytest.raises(openai.BadRequestError) as refused:
        client.conversations.items.create(conversation.id, items=[again])  # type: ignore[list-item]
    assert refused.value.body["param"] == "items"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL_NAME, input=[again], conversation=conversation.id)  # type: ignore[list-item]
    assert refused.value.body["param"] == "input"  # type: ignore[index]
    assert item_ids(client, conversation.id) == [added.data[0].id]


def test_tool_outputs_continue_a_conversation_in_it(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    first = client.responses.create(
        model=MODEL_NAME,
        conversation=conversation.id,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
        temperature=0,
    )
    calls = [item.call_id for item in first.output if item.type == "function_call"]
    continued = client.post(
        f"/responses/{first.id}/tool_outputs",
        cast_to=Response,
        body={"tool_outputs": [{"call_id": call_id, "output": "sunny"} for call_id in calls]},
    )
    assert continued.conversation is not None and continued.conversation.id == conversation.id
    assert continued.previous_response_id is None
    kinds = [item.type for item in client.conversations.items.list(conversation.id, order="asc")]
    assert kinds[: 1 + 2 * len(calls)] == ["message", *["function_call"] * len(calls), *["function_call_output"] * len(calls)]
    assert kinds[-1] == "message"


def test_a_background_turn_joins_its_conversation_when_it_ends(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    queued = client.responses.create(
        model=MODEL_NAME, conversation=conversation.id, input="Name a colour.", max_output_tokens=8, background=True
    )
    deadline = time.monotonic() + 60.0
    found = client.responses.retrieve(queued.id)
    while found.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        found = client.responses.retrieve(queued.id)
    assert found.status in ("completed", "incomplete")
    assert found.conversation is not None and found.conversation.id == conversation.id
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.id for item in items][-1] == found.output[-1].id and len(items) == 1 + len(found.output)

"""/v1/responses: create (streamed, not, or in the background), retrieve, delete, cancel, list input items,
and our tool_outputs extension. Generation reuses the chat path: `ChatOutputProcessor` splits the text,
`start_generation`/`chunks` drive Triton, `api_error` maps its refusals."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from frontend.errors import APIError, bad_request
from frontend.protocol.chat import ChatDelta
from frontend.protocol.responses import (
    ITEM,
    DeletedResponse,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputTokensDetails,
    Item,
    ItemList,
    OutputTokensDetails,
    ReasoningItem,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    ToolOutputsRequest,
)
from frontend.protocol.responses_stream import (
    StreamEvent,
)
from frontend.reasoning import reasoning_parser
from frontend.response_store import JSON, ResponseStore, StoredResponse
from frontend.serving.chat_output import ChatOutputProcessor
from frontend.serving.context import ServingContext
from frontend.serving.conversations import ConversationsHandler, check_unique_ids
from frontend.serving.engine_params import api_error
from frontend.serving.generation import Generation, chunks, start_generation
from frontend.serving.item_pages import item_page
from frontend.serving.logprobs import LogprobFormatter
from frontend.serving.responses_background import BackgroundRun, BackgroundRuns
from frontend.serving.responses_events import ResponseEvents, end_abandoned
from frontend.serving.responses_input import PreparedResponse, ResponseInputBuilder
from frontend.serving.sse import DONE
from frontend.tenancy import current_tenant, visible_to_current_tenant
from frontend.triton_client import GenerationChunk, TritonError

ENDPOINT = "/v1/responses"
# Statuses after which nothing changes any more.
FINAL = ("completed", "incomplete", "failed", "cancelled")
# Following or cancelling a background response that another replica runs goes through the shared store:
# how often it is read; how long its `updated_at` may stand still (the running replica moves it every
# WATCH_SECONDS) before a follower takes that replica for dead; how long a cancel waits for it to be stored.
FOLLOW_POLL_SECONDS = 0.2
STALE_SECONDS = 15.0
CANCEL_WAIT_SECONDS = 10.0
# A response nobody has kept alive for STALE_SECONDS by the store's clock is abandoned (its replica died):
# the replica that finds it ends it, failed. A cancel ends it once it misses this long of keep-alives
# (WATCH_SECONDS apart, 10 missed): sooner than STALE_SECONDS since it only does what was asked, but long
# enough that a live replica, which would keep the partial output, answers first.
CANCEL_IDLE_SECONDS = 5.0


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def not_found(response_id: str, why: str = "") -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found{why}.", "invalid_request_error", None, "not_found"
    )


def event_frame(event: dict[str, Any]) -> str:
    """SSE as OpenAI sends it: the event name, then its JSON payload."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


class ResponsesHandler:
    def __init__(self, ctx: ServingContext, store: ResponseStore, conversations: ConversationsHandler) -> None:
        self.ctx = ctx
        self.store = store
        self.conversations = conversations
        self.inputs = ResponseInputBuilder(ctx)
        self.runs = BackgroundRuns(store)

    async def close(self) -> None:
        """At shutdown: background responses still running are stored as cancelled, then the store closes."""
        await self.runs.cancel_all()
        await asyncio.to_thread(self.store.close)

    # ---- create -------------------------------------------------------------------------------------------

    async def create(
        self, request: ResponsesRequest, response_id: str
    ) -> ResponseObject | AsyncIterator[str]:
        """The finished response, its SSE stream, or (background) the queued response / its stream."""
        if request.background and not request.store:
            raise bad_request("background responses must be stored: drop store=false", param="background")
        conversation = request.conversation_reference()
        if conversation is not None and request.previous_response_id is not None:
            raise bad_request(
                "conversation and previous_response_id cannot be used together: a conversation holds every turn",
                param="conversation",
            )
        if conversation is not None:
            history = await self.conversations.history(conversation.id)
        else:
            history = await self._history(request.previous_response_id)
        prepared = await self.inputs.prepare(request, history, response_id)
        if conversation is not None:
            check_unique_ids(history, prepared.input_items, "input")
        if request.background:
            return await self._start_background(prepared, request.stream)
        generation = await start_generation(self.ctx, prepared.generation, prepared.params, "input", ENDPOINT)
        try:
            await self._record_start(prepared, request.previous_response_id)
        except BaseException:
            await generation.rest.aclose()
            raise
        events = ResponseEvents(prepared.response, prepared.max_calls, prepared.logprobs is not None)
        stream = self._generate(prepared, generation, events, events.lifecycle("created"), None)
        if request.stream:
            return self._frames(stream)
        async with aclosing(stream) as running:
            async for _ in running:
                pass
        return events.response

    async def _record_start(self, prepared: PreparedResponse, previous_response_id: str | None) -> None:
        response = prepared.response
        if not response.store:
            await asyncio.to_thread(self.store.remember_unstored, response.id, current_tenant.get())
            return
        items = [item.model_dump(mode="json") for item in prepared.input_items]
        body = response.model_dump(mode="json")
        await asyncio.to_thread(self.store.create, body, items, previous_response_id, current_tenant.get())

    async def _generate(
        self,
        prepared: PreparedResponse,
        generation: Generation,
        events: ResponseEvents,
        created: StreamEvent,
        run: BackgroundRun | None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every event of one generation; the final response is stored before the last event goes out.

        If the consumer stops early (client gone, background run cancelled) the response is stored as
        cancelled and closing the chunk stream cancels the Triton request."""

        def emit(event: StreamEvent) -> StreamEvent:
            if run is not None:
                run.append(event.model_dump(mode="json"))
            return event

        config = self.ctx.config
        processor = ChatOutputProcessor(
            reasoning_parser(config.reasoning_parser)
            if config.reasoning_parser and prepared.parse_reasoning
            else None,
            prepared.tool_parser() if prepared.tool_parser else None,
        )
        formatter = None
        if prepared.logprobs is not None:
            formatter = LogprobFormatter(self.ctx.templater, prepared.logprobs)
        finished = False
        try:
            yield emit(created)
            events.response.status = "in_progress"
            yield emit(events.lifecycle("in_progress"))
            last: GenerationChunk = generation.first
            try:
                async with aclosing(chunks(self.ctx, generation)) as responses:
                    async for chunk in responses:
                        last = chunk
                        delta = (processor.feed(chunk.text) if chunk.text else None) or ChatDelta()
                        logprobs = []
                        if formatter is not None and chunk.logprobs:
                            entries = formatter.chat(chunk.logprobs).content or []
                            logprobs = [entry.model_dump(mode="json") for entry in entries]
                        for event in events.feed(delta, logprobs):
                            yield emit(event)
                tail = processor.finish()
                final = events.feed(tail) if tail else []
                final += events.finish(last.finish_reason, self._usage(last, events.response))
            except TritonError as error:
                final = events.fail(api_error(error, prepared.params, "input"))
            for event in final:
                emit(event)
            saving = asyncio.ensure_future(self._save(events.response, run, self._turn(prepared, events.response)))
            try:
                await asyncio.shield(saving)
            except asyncio.CancelledError:
                # The client left while the ended response was being stored: the save runs to its end, so the
                # response stays stored as ended (its turn in its conversation), not overwritten as cancelled.
                await saving
                finished = True
                raise
            finished = True
            for event in final:
                yield event
        finally:
            if not finished:
                events.cancel()
                # Synchronous on purpose: this runs while the generator is being closed or cancelled.
                self._save_now(events.response, run)

    @staticmethod
    def _turn(prepared: PreparedResponse, response: ResponseObject) -> list[JSON] | None:
        """What a turn that ended with an answer (complete or cut short) adds to its conversation: its input
        items, then its output items. Failed and cancelled turns leave the conversation as it was."""
        if response.conversation is None or response.status not in ("completed", "incomplete"):
            return None
        return [item.model_dump(mode="json") for item in [*prepared.input_items, *response.output]]

    def _usage(self, last: GenerationChunk, response: ResponseObject) -> ResponseUsage:
        reasoning = "".join(item.text() for item in response.output if isinstance(item, ReasoningItem))
        reasoning_tokens = len(self.ctx.templater.encode(reasoning, False)) if reasoning else 0
        return ResponseUsage(
            input_tokens=last.num_input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=last.num_cached_tokens),
            output_tokens=last.num_output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
            total_tokens=last.num_input_tokens + last.num_output_tokens,
        )

    async def _save(self, response: ResponseObject, run: BackgroundRun | None, turn: list[JSON] | None = None) -> None:
        if response.store or turn:
            await asyncio.to_thread(self._save_now, response, run, turn)

    def _save_now(self, response: ResponseObject, run: BackgroundRun | None, turn: list[JSON] | None = None) -> None:
        """Store the response as it stands (with store=true) and add a finished turn to its conversation, in
        one transaction: a turn is in its conversation exactly when its response was stored as ended."""
        if response.store:
            self.store.update(response.model_dump(mode="json"), run.events if run is not None else None, turn)
        elif turn and response.conversation is not None:
            self.store.add_conversation_items(response.conversation.id, turn)

    async def _frames(self, events: AsyncGenerator[StreamEvent, None]) -> AsyncIterator[str]:
        async with aclosing(events) as running:
            async for event in running:
                yield event_frame(event.model_dump(mode="json"))
        yield DONE

    # ---- background ---------------------------------------------------------------------------------------

    async def _start_background(
        self, prepared: PreparedResponse, stream: bool
    ) -> ResponseObject | AsyncIterator[str]:
        prepared.response.status = "queued"
        await self._record_start(prepared, prepared.response.previous_response_id)
        queued = prepared.response.model_copy(deep=True)
        self.runs.start(queued.id, lambda run: self._run_in_background(prepared, run))
        if stream:
            return self._follow(queued.id, -1)
        return queued

    async def _run_in_background(self, prepared: PreparedResponse, run: BackgroundRun) -> None:
        events = ResponseEvents(prepared.response, prepared.max_calls, prepared.logprobs is not None)
        created = events.lifecycle("created")
        try:
            generation = await start_generation(
                self.ctx, prepared.generation, prepared.params, "input", ENDPOINT
            )
        except APIError as error:
            run.append(created.model_dump(mode="json"))
            for event in events.fail(error):
                run.append(event.model_dump(mode="json"))
            await self._save(events.response, run)
            return
        except asyncio.CancelledError:
            # Cancelled while waiting for the first token: nothing was generated.
            events.cancel()
            self._save_now(events.response, run)
            raise
        events.response.status = "in_progress"
        await self._save(events.response, None)
        async with aclosing(self._generate(prepared, generation, events, created, run)) as running:
            async for _ in running:
                pass

    async def _follow(self, response_id: str, starting_after: int) -> AsyncIterator[str]:
        run = self.runs.get(response_id)
        if run is not None:
            async for event in run.follow(starting_after):
                yield event_frame(event)
        else:
            async for event in self._follow_store(response_id, starting_after):
                yield event_frame(event)
        yield DONE

    async def _follow_store(self, response_id: str, starting_after: int) -> AsyncIterator[JSON]:
        """The stored events after `starting_after`: of an ended response, or of one another replica is
        running, polled until it ends. One that replica stopped keeping alive for STALE_SECONDS (by the
        store's clock) is ended here as abandoned, or by whoever got there first, and its ending streamed."""
        position = starting_after
        while True:
            # The status first: a response that has ended had all its events stored with its last status.
            found = await asyncio.to_thread(self.store.get, response_id)
            for event in await asyncio.to_thread(self.store.events, response_id, position):
                position = event["sequence_number"]
                yield event
            if found is None or found.body.get("status") in FINAL:
                return
            if found.idle_seconds > STALE_SECONDS:
                # Ended here, or already by another replica: the next read streams its ending either way
                # (and a replica that came back to life is followed on).
                await self._end_if_abandoned(found, "failed", STALE_SECONDS)
            await asyncio.sleep(FOLLOW_POLL_SECONDS)

    # ---- stored responses ---------------------------------------------------------------------------------

    async def _lookup(self, response_id: str) -> StoredResponse | None:
        """The stored row, or None when there is none or it belongs to another tenant (whose ids are
        answered exactly like unknown ones)."""
        found = await asyncio.to_thread(self.store.get, response_id)
        if found is None or not visible_to_current_tenant(found.owner):
            return None
        return found

    async def _stored(self, response_id: str) -> StoredResponse:
        found = await self._lookup(response_id)
        if found is None:
            raise not_found(response_id)
        if not found.stored:
            raise not_found(response_id, " (it was created with store=false, so it was not kept)")
        return found

    async def _history(self, previous_response_id: str | None) -> list[Item]:
        """The conversation up to and including `previous_response_id`: every turn's inputs and outputs."""
        chain: list[StoredResponse] = []
        current = previous_response_id
        while current is not None:
            found = await self._lookup(current)
            if found is None or not found.stored:
                why = (
                    "was not found"
                    if found is None
                    else "was created with store=false and cannot be continued"
                )
                raise bad_request(f"Previous response '{current}' {why}.", param="previous_response_id")
            if found.body.get("status") not in FINAL:
                raise bad_request(
                    f"Previous response '{current}' is still {found.body.get('status')}.",
                    param="previous_response_id",
                )
            chain.append(found)
            current = found.previous_response_id
        items: list[Item] = []
        for turn in reversed(chain):
            for raw in await asyncio.to_thread(self.store.input_items, turn.id) + turn.body.get("output", []):
                items.append(ITEM.validate_python(raw))
        return items

    async def retrieve(
        self, response_id: str, stream: bool, starting_after: int | None
    ) -> ResponseObject | AsyncIterator[str]:
        found = await self._stored(response_id)
        if not stream:
            if await self._end_if_abandoned(found, "failed", STALE_SECONDS):
                found = await self._stored(response_id)
            return ResponseObject.model_validate(found.body)
        if not found.body.get("background"):
            raise bad_request("only background responses can be streamed again", param="stream")
        return self._follow(response_id, -1 if starting_after is None else starting_after)

    async def delete(self, response_id: str) -> DeletedResponse:
        await self._stored(response_id)
        await self.runs.cancel(response_id)
        await asyncio.to_thread(self.store.delete, response_id)
        return DeletedResponse(id=response_id)

    async def cancel(self, response_id: str) -> ResponseObject:
        found = await self._stored(response_id)
        if not found.body.get("background"):
            raise bad_request("only background responses can be cancelled", param="response_id")
        if await self.runs.cancel(response_id):
            found = await self._stored(response_id)
        elif found.body.get("status") not in FINAL:
            # Running on another replica (a shared store): ask it, and wait for it to store the cancellation,
            # or end it here once that replica is found gone.
            await asyncio.to_thread(self.store.request_cancel, response_id)
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while found.body.get("status") not in FINAL and time.monotonic() < deadline:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                await self._end_if_abandoned(found, "cancelled", CANCEL_IDLE_SECONDS)
                found = await self._stored(response_id)
        return ResponseObject.model_validate(found.body)

    async def _end_if_abandoned(self, found: StoredResponse, status: str, idle_seconds: float) -> bool:
        """End a background response as `status` in the store if no replica has kept it alive for
        `idle_seconds`; whether it did. Never one this replica runs."""
        if (
            not found.body.get("background")
            or found.body.get("status") in FINAL
            or found.idle_seconds <= idle_seconds  # kept alive: no write (pollers GET running responses)
            or self.runs.get(found.id) is not None
        ):
            return False
        response = ResponseObject.model_validate(found.body)
        events = [event.model_dump(mode="json") for event in end_abandoned(response, status)]
        body = response.model_dump(mode="json")
        return await asyncio.to_thread(self.store.end_abandoned, body, events, idle_seconds)

    async def input_items(
        self,
        response_id: str,
        after: str | None,
        before: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> ItemList:
        """OpenAI's cursor pagination over a response's input items (newest first by default)."""
        await self._stored(response_id)
        raw = await asyncio.to_thread(self.store.input_items, response_id)
        items = [ITEM.validate_python(item) for item in raw]
        return item_page(items, after, before, limit, order, f"the input of response '{response_id}'")

    async def submit_tool_outputs(
        self, response_id: str, body: ToolOutputsRequest, new_id: str
    ) -> ResponseObject | AsyncIterator[str]:
        """Our extension: the continuation of a response that stopped at function calls, given results."""
        previous = ResponseObject.model_validate((await self._stored(response_id)).body)
        calls = [item.call_id for item in previous.output if isinstance(item, FunctionCallItem)]
        if not calls:
            raise bad_request(f"response '{response_id}' made no function calls", param="tool_outputs")
        for index, output in enumerate(body.tool_outputs):
            if output.id not in calls:
                raise bad_request(
                    f"response '{response_id}' made no call with id '{output.id}'", f"tool_outputs.{index}"
                )
        if previous.conversation is not None and previous.status not in ("completed", "incomplete"):
            # Its calls joined the conversation only if it ended; a continuation before would answer nothing.
            raise bad_request(
                f"response '{response_id}' is {previous.status}: its calls are not in its conversation",
                param="tool_outputs",
            )
        missing = sorted(set(calls) - {output.id for output in body.tool_outputs})
        if missing:
            raise bad_request(f"tool_outputs lacks results for {', '.join(missing)}", param="tool_outputs")
        # A forced choice (required, named) would force another call forever: the continuation may answer.
        choice = previous.tool_choice
        if choice not in ("none", "auto"):
            choice = "auto" if self.ctx.config.enable_auto_tool_choice else "none"
        request = ResponsesRequest(
            model=previous.model,
            input=[
                FunctionCallOutputItem(call_id=output.id, output=output.output)
                for output in body.tool_outputs
            ],
            # A turn of a conversation was added to it when it ended: the continuation follows on there.
            previous_response_id=None if previous.conversation else response_id,
            conversation=previous.conversation,
            instructions=previous.instructions,
            tools=previous.tools,
            tool_choice=choice,
            parallel_tool_calls=previous.parallel_tool_calls,
            max_output_tokens=previous.max_output_tokens,
            max_tool_calls=previous.max_tool_calls,
            temperature=previous.temperature,
            top_p=previous.top_p,
            top_logprobs=previous.top_logprobs,
            text=previous.text,
            reasoning=previous.reasoning,
            truncation=previous.truncation,
            metadata=previous.metadata or None,
            user=previous.user,
            safety_identifier=previous.safety_identifier,
            service_tier=previous.service_tier,
            prompt_cache_key=previous.prompt_cache_key,
            stream=body.stream,
        )
        return await self.create(request, new_id)

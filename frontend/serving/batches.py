"""The Batch API: a JSONL file of requests run in the background, its answers written to files.

A batch moves validating -> in_progress -> finalizing -> completed, or to failed (its input file is no
batch input), expired (24 hours passed first) or cancelling -> cancelled. Each line calls the same handler
its endpoint's route calls, so a line answers exactly what a direct request would have; 200 answers go to
the output file, every other status to the error file, with the lines a cancel or the expiry left
unanswered. Answers are appended to the files as they come (in the order they finish, as OpenAI's may be:
`custom_id` names each), so a batch holds none of them in memory.

Batches run in this process. One stopped with the server (its record still says validating, in_progress
or finalizing) starts over when the server starts again; one that was cancelling ends cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from frontend.errors import RETRY_AFTER_SECONDS, APIError, bad_request, body_validation_error
from frontend.file_store import FileStore, StoredBatch, new_id
from frontend.protocol.batches import (
    Batch,
    BatchCreateRequest,
    BatchError,
    BatchErrors,
    BatchInputLine,
    BatchLineError,
    BatchList,
    BatchOutputLine,
    BatchRequestCounts,
    BatchResponse,
    BatchUsage,
)
from frontend.protocol.chat import ChatCompletionRequest
from frontend.protocol.completions import CompletionRequest
from frontend.protocol.embeddings import EmbeddingRequest
from frontend.protocol.responses import ResponsesRequest
from frontend.protocol.scores import RerankRequest, ScoreRequest
from frontend.serving.chat import ChatHandler
from frontend.serving.completions import CompletionHandler
from frontend.serving.context import ServingContext
from frontend.serving.embeddings import EmbeddingHandler
from frontend.serving.files import file_not_found
from frontend.serving.item_pages import listing, page
from frontend.serving.responses import ResponsesHandler
from frontend.serving.scores import ScoreHandler
from frontend.tenancy import current_tenant, visible_to_current_tenant

logger = logging.getLogger(__name__)

COMPLETION_WINDOW_S = 24 * 3600
# OpenAI's limit on the requests of one batch.
MAX_REQUESTS = 50_000
# Validation stops listing problems after this many (the first ones say what is wrong).
MAX_REPORTED_ERRORS = 100
# Lines of all batches together in flight at once: enough to fill the engine's batch, few enough that a
# large batch does not queue ahead of interactive requests by more than that.
REQUESTS_IN_FLIGHT = 64
# How often a running batch's request counts reach its record (what GET /v1/batches/{id} shows).
PROGRESS_SAVE_S = 1.0
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass
class Endpoint:
    """What a batch line's body is and which handler answers it (the one its HTTP route calls)."""

    request: type[BaseModel]
    answer: Callable[[Any, str], Awaitable[Any]]
    # What the answer's id starts with, as the route names it ("chatcmpl-", "resp_", ...).
    id_prefix: str


@dataclass
class Run:
    """A batch running in this process: its record as it goes (what retrieve shows) and its answers."""

    stored: StoredBatch
    # Where its 200 answers ("output") and the others ("error") are appended (FileStore.spill_path).
    spills: dict[str, Path]
    lines: list[BatchInputLine] = field(default_factory=list)
    # The input lines answered so far.
    answered: set[int] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    # Held while its record is written, so that the last write made is the last to land.
    saving: asyncio.Lock = field(default_factory=asyncio.Lock)

    def add(self, index: int, output: BatchOutputLine) -> None:
        self.answered.add(index)
        batch = self.stored.batch
        succeeded = output.response is not None and output.response.status_code == 200
        if succeeded:
            assert output.response is not None
            batch.request_counts.completed += 1
            _add_usage(batch.usage, output.response.body.get("usage") or {})
        else:
            batch.request_counts.failed += 1
        # One line of a few KB: the write lands in the file's buffer, no thread needed.
        with self.spills["output" if succeeded else "error"].open("a", encoding="utf-8") as spill:
            spill.write(output.model_dump_json() + "\n")


def _add_usage(total: BatchUsage, usage: dict[str, Any]) -> None:
    """One answer's usage, in chat's and completions' names (prompt/completion) or the Responses API's
    (input/output)."""
    input_tokens = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
    output_tokens = usage.get("completion_tokens", usage.get("output_tokens")) or 0
    input_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    total.input_tokens += input_tokens
    total.output_tokens += output_tokens
    total.total_tokens += input_tokens + output_tokens
    total.input_tokens_details.cached_tokens += input_details.get("cached_tokens") or 0
    total.output_tokens_details.reasoning_tokens += output_details.get("reasoning_tokens") or 0


def batch_not_found(batch_id: str) -> APIError:
    return APIError(
        404, f"No such Batch object: {batch_id}", "invalid_request_error", "batch_id", "batch_not_found"
    )


class InvalidBatch(Exception):
    """The input file is no batch input: the batch fails with these errors."""

    def __init__(self, errors: list[BatchError]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors


class BatchHandler:
    def __init__(self, ctx: ServingContext, store: FileStore, responses: ResponsesHandler) -> None:
        self.store = store
        chat, completions = ChatHandler(ctx), CompletionHandler(ctx)
        embeddings, scores = EmbeddingHandler(ctx), ScoreHandler(ctx)
        self.endpoints = {
            "/v1/chat/completions": Endpoint(ChatCompletionRequest, chat.create, "chatcmpl-"),
            "/v1/completions": Endpoint(CompletionRequest, completions.create, "cmpl-"),
            "/v1/embeddings": Endpoint(EmbeddingRequest, embeddings.create, "embd-"),
            "/v1/responses": Endpoint(ResponsesRequest, responses.create, "resp_"),
            # vLLM's run-batch also takes these two.
            "/v1/score": Endpoint(ScoreRequest, scores.score, "score-"),
            "/v1/rerank": Endpoint(RerankRequest, scores.rerank, "rerank-"),
        }
        self.runs: dict[str, Run] = {}
        # Batches a client asked to cancel (a run cancelled otherwise is the server stopping).
        self.cancel_requested: set[str] = set()
        self.in_flight = asyncio.Semaphore(REQUESTS_IN_FLIGHT)

    async def create(self, request: BatchCreateRequest) -> Batch:
        if request.endpoint not in self.endpoints:
            raise bad_request(
                f"endpoint must be one of {', '.join(self.endpoints)}; got '{request.endpoint}'", "endpoint"
            )
        input_file = await asyncio.to_thread(self.store.get_file, request.input_file_id)
        if input_file is None or not visible_to_current_tenant(input_file.owner):
            raise file_not_found(request.input_file_id)
        if input_file.file.purpose != "batch":
            raise bad_request(
                f"file {request.input_file_id} was uploaded with purpose '{input_file.file.purpose}'; a batch "
                "reads files uploaded with purpose 'batch'",
                "input_file_id",
            )
        now = int(time.time())
        batch = Batch(
            id=new_id("batch_"),
            endpoint=request.endpoint,
            input_file_id=request.input_file_id,
            completion_window=request.completion_window,
            status="validating",
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_S,
            metadata=request.metadata,
        )
        expiry = request.output_expires_after.seconds if request.output_expires_after is not None else None
        stored = StoredBatch(batch, current_tenant.get(), expiry)
        answer = batch.model_copy(deep=True)
        # Running before its record is visible, so that every unfinished batch a request can name has a run.
        self._start(stored)
        await self._save(stored)
        return answer

    async def retrieve(self, batch_id: str) -> Batch:
        return (await self._visible(batch_id)).batch

    async def list_batches(self, after: str | None, limit: int) -> BatchList:
        batches = [
            self._live(stored).batch
            for stored in await asyncio.to_thread(self.store.list_batches)
            if visible_to_current_tenant(stored.owner)
        ]
        return BatchList(**listing(*page(batches, after, None, limit, "desc", "the batches")))

    async def cancel(self, batch_id: str) -> Batch:
        stored = await self._visible(batch_id)
        batch = stored.batch
        run = self.runs.get(batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        if batch.status not in ("validating", "in_progress"):
            raise APIError(
                409,
                f"batch {batch_id} is {batch.status}: it can no longer be cancelled",
                code="batch_not_cancellable",
            )
        # Unfinished and visible through its run (_visible looks there first): the run is in self.runs.
        assert run is not None and run.task is not None, "an unfinished batch has a run"
        batch.status, batch.cancelling_at = "cancelling", int(time.time())
        self.cancel_requested.add(batch_id)
        run.task.cancel()
        # As it is now: the run goes on to cancelled while the record is written.
        answer = batch.model_copy(deep=True)
        await self._save(stored)
        return answer

    def resume(self) -> None:
        """At startup: take up the batches the last run of the server left unfinished."""
        for stored in self.store.list_batches():
            if stored.batch.status in UNFINISHED:
                logger.info(
                    "batch %s was %s when the server stopped: starting it over",
                    stored.batch.id,
                    stored.batch.status,
                )
                if stored.batch.status == "cancelling":
                    self.cancel_requested.add(stored.batch.id)
                self._start(stored)

    async def close(self) -> None:
        """At shutdown: stop the runs, leaving their records unfinished (the next start takes them up)."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _visible(self, batch_id: str) -> StoredBatch:
        """The batch as its run has it, else as stored (a run leaves only after its last save, so a record
        read once the run is gone is final)."""
        run = self.runs.get(batch_id)
        stored = run.stored if run is not None else await asyncio.to_thread(self.store.get_batch, batch_id)
        if stored is None or not visible_to_current_tenant(stored.owner):
            raise batch_not_found(batch_id)
        return stored

    async def _save(self, stored: StoredBatch) -> None:
        """Write the record as it is now. Saves of one batch land in the order they are made: each holds
        the run's lock until its write is done, even when the run is cancelled meanwhile."""
        snapshot = StoredBatch(stored.batch.model_copy(deep=True), stored.owner, stored.output_expiry_s)
        run = self.runs.get(stored.batch.id)
        async with run.saving if run is not None else contextlib.nullcontext():
            write = asyncio.ensure_future(asyncio.to_thread(self.store.save_batch, snapshot))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write
                raise

    def _live(self, stored: StoredBatch) -> StoredBatch:
        """A running batch's record as its run has it now (the stored one lags by up to PROGRESS_SAVE_S)."""
        run = self.runs.get(stored.batch.id)
        return run.stored if run is not None else stored

    def _start(self, stored: StoredBatch) -> None:
        spills = {kind: self.store.spill_path(stored.batch.id, kind) for kind in ("output", "error")}
        run = Run(stored, spills)
        # The run's requests are the batch owner's (prefix-cache salt, stored responses), whoever starts it.
        context = contextvars.copy_context()
        context.run(current_tenant.set, stored.owner)
        run.task = asyncio.get_running_loop().create_task(self._run(run), context=context)
        self.runs[stored.batch.id] = run
        run.task.add_done_callback(lambda _: self.runs.pop(stored.batch.id, None))

    async def _run(self, run: Run) -> None:
        stored = run.stored
        batch = stored.batch
        try:
            if batch.id in self.cancel_requested:
                raise asyncio.CancelledError
            async with asyncio.timeout(max(batch.expires_at or 0, 0) - time.time()):
                for spill in run.spills.values():  # what an earlier run of this batch left
                    spill.unlink(missing_ok=True)
                run.lines = await self._validate(batch)
                batch.status, batch.in_progress_at = "in_progress", int(time.time())
                # A batch started over counts from nothing.
                batch.request_counts, batch.usage = BatchRequestCounts(total=len(run.lines)), BatchUsage()
                await self._save(stored)
                await self._answer_all(run)
            await self._finish(run, "completed", None)
        except InvalidBatch as invalid:
            batch.status, batch.failed_at = "failed", int(time.time())
            batch.errors = BatchErrors(data=invalid.errors)
            await self._save(stored)
        except TimeoutError:
            await self._finish(
                run, "expired", BatchLineError(code="batch_expired", message="the batch expired first")
            )
        except asyncio.CancelledError:
            if batch.id not in self.cancel_requested:
                raise
            await self._finish(
                run,
                "cancelled",
                BatchLineError(code="batch_cancelled", message="the batch was cancelled first"),
            )
        except Exception:
            logger.exception("batch %s failed", batch.id)
            batch.status, batch.failed_at = "failed", int(time.time())
            batch.errors = BatchErrors(
                data=[BatchError(code="server_error", message="the server failed running the batch")]
            )
            await self._save(stored)
        finally:
            self.cancel_requested.discard(batch.id)

    async def _validate(self, batch: Batch) -> list[BatchInputLine]:
        stored_file = await asyncio.to_thread(self.store.get_file, batch.input_file_id)
        if stored_file is None:
            raise InvalidBatch(
                [BatchError(code="file_not_found", message=f"input file {batch.input_file_id} is gone")]
            )
        try:
            data = await asyncio.to_thread(self.store.read_file, batch.input_file_id)
        except FileNotFoundError:  # deleted since the record was read
            raise InvalidBatch(
                [BatchError(code="file_not_found", message=f"input file {batch.input_file_id} is gone")]
            ) from None
        lines = await asyncio.to_thread(parse_input, data, batch.endpoint)
        batch.model = lines[0].body.get("model") if isinstance(lines[0].body.get("model"), str) else None
        return lines

    async def _answer_all(self, run: Run) -> None:
        endpoint = self.endpoints[run.stored.batch.endpoint]
        pending = iter(enumerate(run.lines))
        last_save = time.monotonic()

        async def work() -> None:
            nonlocal last_save
            for index, line in pending:
                async with self.in_flight:
                    output = await self._answer(endpoint, line)
                run.add(index, output)
                if time.monotonic() - last_save >= PROGRESS_SAVE_S:
                    last_save = time.monotonic()
                    await self._save(run.stored)

        async with asyncio.TaskGroup() as workers:
            for _ in range(min(REQUESTS_IN_FLIGHT, len(run.lines))):
                workers.create_task(work())

    async def _answer(self, endpoint: Endpoint, line: BatchInputLine) -> BatchOutputLine:
        """The line's answer as its endpoint gives it; a full engine queue (429) is waited out, not
        answered."""
        request_id = uuid.uuid4().hex
        while True:
            try:
                body = await self._call(endpoint, line, f"{endpoint.id_prefix}{request_id}")
                response = BatchResponse(status_code=200, request_id=request_id, body=body)
            except APIError as error:
                if error.status == 429:
                    await asyncio.sleep(RETRY_AFTER_SECONDS)
                    continue
                response = BatchResponse(
                    status_code=error.status, request_id=request_id, body=error.body().model_dump(mode="json")
                )
            except Exception as error:  # noqa: BLE001 - one line's failure is its answer, not the batch's
                logger.exception("batch line %s failed", line.custom_id)
                failure = APIError(500, f"internal error: {type(error).__name__}", "server_error")
                response = BatchResponse(
                    status_code=500, request_id=request_id, body=failure.body().model_dump(mode="json")
                )
            return BatchOutputLine(
                id=f"batch_req_{request_id}", custom_id=line.custom_id, response=response, error=None
            )

    @staticmethod
    async def _call(endpoint: Endpoint, line: BatchInputLine, answer_id: str) -> dict[str, Any]:
        try:
            request = endpoint.request.model_validate(line.body)
        except ValidationError as error:
            raise body_validation_error(error) from None
        if getattr(request, "stream", False):
            raise bad_request("stream is not available in a batch: each answer is written whole", "stream")
        if getattr(request, "background", False):
            raise bad_request(
                "background is not available in a batch: the batch itself runs in the background",
                "background",
            )
        answer = await endpoint.answer(request, answer_id)
        if isinstance(answer, AsyncIterator):
            # Streams were refused above; a handler that still streams is a bug, not the client's.
            raise TypeError(f"{type(endpoint.answer)} streamed a batch answer")
        body: dict[str, Any] = answer.model_dump(mode="json")
        return body

    async def _finish(self, run: Run, status: str, unanswered: BatchLineError | None) -> None:
        """Turn the spilled answers into the output and error files (the lines left unanswered, when the
        batch stopped early, joining the error file as `unanswered`) and end the batch with `status`. A
        cancelled batch stays cancelling until then; a completed one is finalizing."""
        stored = run.stored
        batch = stored.batch
        if status == "completed":
            batch.status, batch.finalizing_at = "finalizing", int(time.time())
            await self._save(stored)
        if unanswered is not None:
            left = [line for index, line in enumerate(run.lines) if index not in run.answered]
            await asyncio.to_thread(_write_unanswered, run.spills["error"], left, unanswered)
        for kind, spill in run.spills.items():
            if spill.exists():
                file = await asyncio.to_thread(
                    self.store.adopt_file,
                    spill,
                    f"{batch.id}_{kind}.jsonl",
                    "batch_output",
                    stored.owner,
                    stored.output_expiry_s,
                )
                setattr(batch, f"{kind}_file_id", file.id)
        batch.status = status  # type: ignore[assignment]  # one of the end states, named by the caller
        setattr(batch, f"{status}_at", int(time.time()))
        await self._save(stored)


def _write_unanswered(spill: Path, lines: list[BatchInputLine], error: BatchLineError) -> None:
    with spill.open("a", encoding="utf-8") as out:
        for line in lines:
            output = BatchOutputLine(
                id=f"batch_req_{uuid.uuid4().hex}", custom_id=line.custom_id, response=None, error=error
            )
            out.write(output.model_dump_json() + "\n")


def parse_input(data: bytes, endpoint: str) -> list[BatchInputLine]:
    """The requests of a batch input file, or InvalidBatch naming the lines at fault."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBatch(
            [BatchError(code="invalid_file_format", message="the input file is not UTF-8 text")]
        ) from None
    lines: list[BatchInputLine] = []
    errors: list[BatchError] = []
    seen: set[str] = set()
    # Lines end at "\n" only: JSON strings may hold U+2028 and other breaks str.splitlines() would cut at.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = BatchInputLine.model_validate(json.loads(raw))
        except json.JSONDecodeError:
            errors.append(BatchError(code="invalid_json_line", message="this line is not JSON", line=number))
            continue
        except ValidationError as error:
            invalid = body_validation_error(error)
            errors.append(
                BatchError(code="invalid_request", message=invalid.message, param=invalid.param, line=number)
            )
            continue
        if line.url != endpoint:
            errors.append(
                BatchError(
                    code="mismatched_endpoint",
                    message=f"url '{line.url}' is not the batch's endpoint '{endpoint}'",
                    param="url",
                    line=number,
                )
            )
        if line.custom_id in seen:
            errors.append(
                BatchError(
                    code="duplicate_custom_id",
                    message=f"custom_id '{line.custom_id}' names an earlier line too",
                    param="custom_id",
                    line=number,
                )
            )
        seen.add(line.custom_id)
        lines.append(line)
    if not lines and not errors:
        errors.append(BatchError(code="empty_file", message="the input file holds no requests"))
    if len(lines) > MAX_REQUESTS:
        errors.append(
            BatchError(
                code="too_many_requests",
                message=f"{len(lines)} requests; a batch holds at most {MAX_REQUESTS}",
            )
        )
    if errors:
        raise InvalidBatch(errors[:MAX_REPORTED_ERRORS])
    return lines

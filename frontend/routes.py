"""Thin FastAPI routes: parse, call a handler, pick the response type. No logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from frontend.engine_metrics import EngineMetricsReader
from frontend.errors import bad_request
from frontend.protocol.chat import ChatCompletionRequest
from frontend.protocol.classify import ClassificationRequest
from frontend.protocol.completions import CompletionRequest
from frontend.protocol.embeddings import EmbeddingRequest
from frontend.protocol.pooling import PoolingRequest
from frontend.protocol.scores import RerankRequest, ScoreRequest
from frontend.protocol.tokenize import DetokenizeRequest, TokenizeRequest
from frontend.serving.chat import ChatHandler
from frontend.serving.classify import ClassifyHandler
from frontend.serving.completions import CompletionHandler
from frontend.serving.context import ServingContext
from frontend.serving.embeddings import EmbeddingHandler
from frontend.serving.models import ModelsHandler
from frontend.serving.scores import ScoreHandler
from frontend.serving.tokenize import TokenizeHandler

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client left before the answer was ready."""


class EventStreamResponse(StreamingResponse):
    """SSE that stops (and closes its generator, cancelling the Triton request) as soon as the client leaves,
    whatever ASGI spec version the server speaks."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def stream() -> None:
            try:
                await self.stream_response(send)
            finally:
                if isinstance(self.body_iterator, AsyncGenerator):
                    await self.body_iterator.aclose()

        streaming = asyncio.create_task(stream())
        watching = asyncio.create_task(self.listen_for_disconnect(receive))
        done, pending = await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if streaming in done:
            streaming.result()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run a non-streamed handler, cancelling it (and its Triton request) if the client disconnects."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected()
    return task.result()


def _response_id(prefix: str, request: Request, body_request_id: str | None) -> str:
    """`chatcmpl-<request id>` (as vLLM does), so one id follows a request through logs and Triton. The
    request id is the client's X-Request-Id header, else vLLM's `request_id` body field (then also sent
    back as the X-Request-Id header), else one the guard made up."""
    if body_request_id is not None and "x-request-id" not in request.headers:
        request.state.request_id = body_request_id
    return f"{prefix}-{request.state.request_id}"


def respond(result: BaseModel | AsyncIterator[str]) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json"))
    return EventStreamResponse(result, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def build_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()
    chat = ChatHandler(ctx)
    classify = ClassifyHandler(ctx)
    completions = CompletionHandler(ctx)
    embeddings = EmbeddingHandler(ctx)
    models = ModelsHandler(ctx)
    scores = ScoreHandler(ctx)
    tokenizer = TokenizeHandler(ctx)
    engine_metrics = EngineMetricsReader(ctx.config.triton_metrics_url, ctx.config.triton_model, ctx.config.model_name)

    @router.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return respond(await until_disconnect(request, chat.create(body, _response_id("chatcmpl", request, body.request_id))))

    @router.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, completions.create(body, _response_id("cmpl", request, body.request_id)))
        )

    @router.post("/v1/embeddings")
    async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, embeddings.create(body, _response_id("embd", request, body.request_id)))
        )

    # vLLM's Pooling API, at the path vLLM serves it (no /v1 prefix).
    @router.post("/pooling")
    async def create_pooling(body: PoolingRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, embeddings.pool(body, _response_id("pool", request, body.request_id)))
        )

    # vLLM's Classification API, at the path vLLM serves it (no /v1 prefix).
    @router.post("/classify")
    async def create_classify(body: ClassificationRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, classify.create(body, _response_id("classify", request, body.request_id)))
        )

    @router.post("/v1/score")
    async def create_score(body: ScoreRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, scores.score(body, _response_id("score", request, None)))
        )

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return respond(
            await until_disconnect(request, scores.rerank(body, _response_id("rerank", request, None)))
        )

    # vLLM's other spellings of the same endpoints: /score, and Jina's /rerank and Cohere's /v2/rerank.
    router.add_api_route("/score", create_score, methods=["POST"])
    router.add_api_route("/rerank", rerank, methods=["POST"])
    router.add_api_route("/v2/rerank", rerank, methods=["POST"])

    # SageMaker's (and vLLM's) one door: the body's shape says which endpoint it is, tried in this order
    # (every request model refuses fields it does not know, so at most one fits a well-formed body). An
    # `input` body is an embedding, or a classification where the model is a classifier.
    pooled: tuple[type[BaseModel], Callable[[Any, Request], Awaitable[Response]]] = (
        (ClassificationRequest, create_classify) if ctx.config.classifier is not None else (EmbeddingRequest, create_embedding)
    )
    invocation_types: list[tuple[type[BaseModel], Callable[[Any, Request], Awaitable[Response]]]] = [
        (ChatCompletionRequest, create_chat_completion),
        (CompletionRequest, create_completion),
        pooled,
        (ScoreRequest, create_score),
        (RerankRequest, rerank),
    ]

    @router.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON"}]) from None
        for request_type, endpoint in invocation_types:
            try:
                parsed = request_type.model_validate(body)
            except ValidationError:
                continue
            return await endpoint(parsed, request)
        raise bad_request(
            "the body fits none of the request types /invocations serves: a chat completion (messages), a "
            "completion (prompt), embeddings or, on a classifier, a classification (input), score (text_1, "
            "text_2) or rerank (query, documents)"
        )

    @router.get("/v1/models")
    async def list_models() -> Response:
        return respond(await models.list())

    @router.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        return respond(await models.retrieve(model))

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        return respond(await tokenizer.tokenize(body))

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        return respond(await tokenizer.detokenize(body))

    @router.get("/health")
    async def health() -> Response:
        ready = await ctx.triton.is_ready(ctx.config.triton_timeout_s)
        return Response(status_code=200 if ready else 503)

    # vLLM's (and SageMaker's) spelling of the same check, by GET or POST.
    router.add_api_route("/ping", health, methods=["GET", "POST"])

    @router.get("/version")
    async def server_version() -> Response:
        try:
            package_version = version("tritonllm")
        except PackageNotFoundError:
            package_version = "unknown"
        return JSONResponse({"version": package_version})

    @router.get("/metrics")
    async def metrics() -> Response:
        rendered = ctx.metrics.render(await engine_metrics.families())
        return Response(rendered, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router

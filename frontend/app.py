"""The FastAPI application: routes, error translation to OpenAI's shape, and the request guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend.audio_routes import build_audio_router
from frontend.conversations_routes import build_conversations_router
from frontend.errors import APIError
from frontend.middleware import RequestGuard
from frontend.response_store import open_store
from frontend.responses_routes import build_responses_router
from frontend.routes import ClientDisconnected, build_router
from frontend.serving.audio import AudioHandler
from frontend.serving.context import ServingContext
from frontend.serving.conversations import ConversationsHandler
from frontend.serving.responses import ResponsesHandler

# Status for a request whose client left (nginx's convention); nobody reads it, the metrics do.
CLIENT_CLOSED_REQUEST = 499


def _param(location: tuple[Any, ...]) -> str | None:
    """`("body", "messages", 0, "content")` -> "messages.0.content" (the request field at fault).

    Pydantic also puts union member tags ("str", "list[TextContentPart]", "function-after[...]") into
    locations; they name no request field and are dropped."""
    parts = [str(part) for part in location if part != "body" and not _is_union_tag(part)]
    return ".".join(parts) or None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict"))


def validation_error(error: RequestValidationError) -> APIError:
    """Pydantic's complaints as one OpenAI 400 naming the first field at fault."""
    details = error.errors()
    if any(detail.get("type") == "json_invalid" for detail in details):
        return APIError(
            400, "The request body is not valid JSON.", "invalid_request_error", None, "invalid_json"
        )
    # A complaint about the body as a whole that is not a request-level rule (those are value errors, such
    # as "send exactly one of 'prompt' and 'messages'"): the body is no JSON object.
    if any(tuple(detail.get("loc", ())) == ("body",) and detail.get("type") != "value_error" for detail in details):
        return APIError(
            400,
            "The request body must be a JSON object (sent with Content-Type: application/json).",
            "invalid_request_error",
            None,
            "invalid_json",
        )
    messages = []
    for detail in details:
        where = _param(tuple(detail.get("loc", ())))
        messages.append(f"{where}: {detail.get('msg')}" if where else str(detail.get("msg")))
        if detail.get("type") == "extra_forbidden" and where:
            messages[-1] = f"{where}: unsupported parameter"
    first = details[0] if details else {}
    return APIError(
        400,
        "; ".join(messages) or "invalid request",
        "invalid_request_error",
        _param(tuple(first.get("loc", ()))),
        "invalid_value",
    )


def _json(error: APIError) -> JSONResponse:
    return JSONResponse(error.body().model_dump(mode="json"), status_code=error.status, headers=error.headers)


def build_app(ctx: ServingContext) -> FastAPI:
    store = open_store(ctx.config.response_store)
    conversations = ConversationsHandler(store)
    responses = ResponsesHandler(ctx, store, conversations)
    audio = AudioHandler(ctx)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Before the Triton channel closes: cancelling background responses cancels their Triton streams.
        await responses.close()
        await ctx.triton.close()
        await audio.close()

    app = FastAPI(
        title="tritonllm OpenAI-compatible server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Parse JSON bodies whatever their Content-Type, as vLLM does: `curl -d` sends a form type.
        strict_content_type=False,
    )
    app.include_router(build_router(ctx))
    app.include_router(build_responses_router(responses))
    app.include_router(build_conversations_router(conversations))
    app.include_router(build_audio_router(audio))

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, error: APIError) -> Response:
        return _json(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, error: RequestValidationError) -> Response:
        return _json(validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException) -> Response:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _json(APIError(error.status_code, str(error.detail), kind, None, None))

    @app.exception_handler(ClientDisconnected)
    async def on_disconnect(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, error: Exception) -> Response:
        return _json(APIError(500, f"internal error: {type(error).__name__}", "server_error", None, None))

    app.add_middleware(
        RequestGuard,  # type: ignore[arg-type]
        api_keys=ctx.config.api_keys,
        max_body_bytes=ctx.config.max_request_body_bytes,
        metrics=ctx.metrics,
        isolate_api_keys=ctx.config.isolate_api_keys,
    )
    if ctx.config.allowed_origins:
        # Outside the guard: a browser's preflight OPTIONS carries no API key.
        app.add_middleware(
            CORSMiddleware,  # type: ignore[arg-type]
            allow_origins=list(ctx.config.allowed_origins),
            allow_methods=list(ctx.config.allowed_methods),
            allow_headers=list(ctx.config.allowed_headers),
            allow_credentials=ctx.config.allow_credentials,
        )
    return app

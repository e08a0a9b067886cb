"""The FastAPI application: routes, error translation to OpenAI's shape, and the request guard."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend.audio_routes import build_audio_router
from frontend.batch_routes import build_batch_router
from frontend.conversations_routes import build_conversations_router
from frontend.errors import APIError, validation_error
from frontend.file_store import FileStore
from frontend.lora_routes import build_lora_router
from frontend.middleware import RequestGuard
from frontend.response_store import open_store
from frontend.responses_routes import build_responses_router
from frontend.routes import ClientDisconnected, build_router
from frontend.serving.audio import AudioHandler
from frontend.serving.batches import BatchHandler
from frontend.serving.context import ServingContext
from frontend.serving.conversations import ConversationsHandler
from frontend.serving.files import FilesHandler
from frontend.serving.lora import LoRAAdapterHandler
from frontend.serving.responses import ResponsesHandler

# Status for a request whose client left (nginx's convention); nobody reads it, the metrics do.
CLIENT_CLOSED_REQUEST = 499


def _json(error: APIError) -> JSONResponse:
    return JSONResponse(error.body().model_dump(mode="json"), status_code=error.status, headers=error.headers)


def build_app(ctx: ServingContext) -> FastAPI:
    store = open_store(ctx.config.response_store)
    conversations = ConversationsHandler(store)
    responses = ResponsesHandler(ctx, store, conversations)
    audio = AudioHandler(ctx)
    # Without a files directory, one that lasts as long as the app.
    scratch = tempfile.TemporaryDirectory(prefix="tritonllm-files-") if ctx.config.files_dir is None else None
    file_store = FileStore(Path(scratch.name) if scratch is not None else ctx.config.files_dir)  # type: ignore[arg-type]
    files = FilesHandler(file_store)
    batches = BatchHandler(ctx, file_store, responses)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batches.resume()
        yield
        # Before the Triton channel closes: stopping batches and background responses cancels their Triton
        # streams.
        await batches.close()
        await responses.close()
        await ctx.triton.close()
        await audio.close()
        if scratch is not None:
            scratch.cleanup()

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
    app.include_router(build_batch_router(files, batches))
    app.include_router(build_lora_router(LoRAAdapterHandler(ctx)))

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, error: APIError) -> Response:
        return _json(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, error: RequestValidationError) -> Response:
        return _json(validation_error(error.errors()))

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
        max_upload_bytes=ctx.config.max_upload_bytes,
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

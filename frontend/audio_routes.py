"""Thin routes of the audio endpoints: read the multipart form, call the handler, pick the response type."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from frontend.errors import bad_request
from frontend.protocol.audio import LIST_FIELDS, AudioRequest
from frontend.routes import EventStreamResponse, until_disconnect
from frontend.serving.audio import AudioAnswer, AudioHandler, TextAnswer


async def read_form(request: Request) -> tuple[AudioRequest, bytes]:
    """The validated form fields and the uploaded file's bytes.

    Repeated fields named like `timestamp_granularities[]` (how the OpenAI SDK sends lists) become lists;
    empty fields count as absent, as curl users leave them.
    """
    async with request.form(max_files=1) as form:
        upload = form.get("file")
        if upload is None:
            raise bad_request("file is required: the audio to recognize, as a multipart upload", param="file")
        if not isinstance(upload, UploadFile):
            raise bad_request("file must be an uploaded file, not a text field", param="file")
        audio = await upload.read()
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            name = key.removesuffix("[]")
            if name == "file":
                continue
            if not isinstance(value, str):
                raise bad_request(f"{name} must be a text field, not a file", param=name)
            if name in LIST_FIELDS:
                fields.setdefault(name, []).append(value)
            elif value:
                fields[name] = value
    try:
        return AudioRequest.model_validate(fields), audio
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


def _respond(answer: AudioAnswer) -> Response:
    if isinstance(answer, BaseModel):
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))
    if isinstance(answer, TextAnswer):
        return Response(answer.text, media_type=answer.media_type)
    return EventStreamResponse(answer, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def build_audio_router(handler: AudioHandler) -> APIRouter:
    router = APIRouter()

    async def recognize(request: Request, task: str) -> Response:
        body, audio = await read_form(request)
        return _respond(
            await until_disconnect(request, handler.create(body, audio, task, request.state.request_id))
        )

    @router.post("/v1/audio/transcriptions")
    async def create_transcription(request: Request) -> Response:
        return await recognize(request, "transcribe")

    @router.post("/v1/audio/translations")
    async def create_translation(request: Request) -> Response:
        return await recognize(request, "translate")

    return router

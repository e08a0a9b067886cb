"""Thin routes of the Files and Batch APIs; the logic lives in `frontend.serving.files` and `.batches`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from frontend.errors import bad_request
from frontend.protocol.batches import BatchCreateRequest, ExpiresAfter
from frontend.routes import respond
from frontend.serving.batches import BatchHandler
from frontend.serving.files import FilesHandler


async def _upload(request: Request, files: FilesHandler) -> Response:
    """multipart/form-data: `file`, `purpose`, and optionally `expires_after[anchor]` and
    `expires_after[seconds]` (how the OpenAI SDK spells a nested object in a form)."""
    async with request.form(max_files=1) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("file is required: the file's bytes, as a multipart upload", param="file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise bad_request("purpose is required", param="purpose")
        expiry_fields = {
            key.removeprefix("expires_after[").removesuffix("]"): value
            for key, value in form.multi_items()
            if key.startswith("expires_after[")
        }
        try:
            expires_after = ExpiresAfter.model_validate(expiry_fields) if expiry_fields else None
        except ValidationError as error:
            raise RequestValidationError(
                [{**detail, "loc": ("expires_after", *detail["loc"])} for detail in error.errors()]
            ) from None
        data = await upload.read()
        filename = upload.filename or "upload"
    return respond(await files.upload(filename, purpose, data, expires_after))


def build_batch_router(files: FilesHandler, batches: BatchHandler) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        return await _upload(request, files)

    @router.get("/v1/files")
    async def list_files(
        purpose: str | None = None,
        after: str | None = None,
        limit: int = Query(default=10_000, ge=1, le=10_000),
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        return respond(await files.list_files(purpose, after, limit, order))

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> Response:
        return respond(await files.retrieve(file_id))

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        return Response(await files.content(file_id), media_type="application/octet-stream")

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        return respond(await files.delete(file_id))

    @router.post("/v1/batches")
    async def create_batch(body: BatchCreateRequest) -> Response:
        return respond(await batches.create(body))

    @router.get("/v1/batches")
    async def list_batches(after: str | None = None, limit: int = Query(default=20, ge=1, le=100)) -> Response:
        return respond(await batches.list_batches(after, limit))

    @router.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> Response:
        return respond(await batches.retrieve(batch_id))

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return respond(await batches.cancel(batch_id))

    return router

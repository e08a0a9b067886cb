"""The Files API: upload, list, retrieve, read and delete files (a batch's input and its results)."""

from __future__ import annotations

import asyncio
from typing import Literal

from frontend.errors import APIError, bad_request
from frontend.file_store import FileStore
from frontend.protocol.batches import (
    UPLOAD_PURPOSES,
    ExpiresAfter,
    FileDeleted,
    FileList,
    FileObject,
)
from frontend.serving.item_pages import listing, page
from frontend.tenancy import current_tenant, visible_to_current_tenant

# OpenAI's default lifetime of a batch input file; files of other purposes stay until deleted.
BATCH_FILE_EXPIRY_S = 30 * 24 * 3600


def file_not_found(file_id: str) -> APIError:
    return APIError(
        404, f"No such File object: {file_id}", "invalid_request_error", "file_id", "file_not_found"
    )


class FilesHandler:
    def __init__(self, store: FileStore) -> None:
        self.store = store

    async def upload(
        self, filename: str, purpose: str, data: bytes, expires_after: ExpiresAfter | None
    ) -> FileObject:
        if purpose not in UPLOAD_PURPOSES:
            raise bad_request(
                f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}; got '{purpose}'", "purpose"
            )
        if not data:
            raise bad_request("file is empty", "file")
        expiry = expires_after.seconds if expires_after is not None else None
        if expiry is None and purpose == "batch":
            expiry = BATCH_FILE_EXPIRY_S
        return await asyncio.to_thread(
            self.store.create_file, filename, purpose, data, current_tenant.get(), expiry
        )

    async def retrieve(self, file_id: str) -> FileObject:
        stored = await asyncio.to_thread(self.store.get_file, file_id)
        if stored is None or not visible_to_current_tenant(stored.owner):
            raise file_not_found(file_id)
        return stored.file

    async def list_files(
        self, purpose: str | None, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> FileList:
        files = [
            stored.file
            for stored in await asyncio.to_thread(self.store.list_files)
            if visible_to_current_tenant(stored.owner) and (purpose is None or stored.file.purpose == purpose)
        ]
        return FileList(**listing(*page(files, after, None, limit, order, "the files")))

    async def content(self, file_id: str) -> bytes:
        await self.retrieve(file_id)
        try:
            return await asyncio.to_thread(self.store.read_file, file_id)
        except FileNotFoundError:
            # Deleted between the two reads.
            raise file_not_found(file_id) from None

    async def delete(self, file_id: str) -> FileDeleted:
        await self.retrieve(file_id)
        deleted = await asyncio.to_thread(self.store.delete_file, file_id)
        if not deleted:
            raise file_not_found(file_id)
        return FileDeleted(id=file_id, deleted=True)

"""Disk state of the Files and Batch APIs: one directory holding each file's bytes beside its record, and
each batch's record.

    DIR/files/<file id>          the bytes as uploaded (or as a batch wrote them)
    DIR/files/<file id>.json     {"object": <FileObject>, "owner": <tenant or null>}
    DIR/batches/<batch id>.json  {"object": <Batch>, "owner": <tenant or null>, "output_expiry_s": <int or null>}
    DIR/batches/<batch id>.<output|error>.partial   a running batch's answers so far (spill_path)

Every write goes to a temporary name and is renamed into place, so a reader (or a restart) sees the old
record or the new one, never half of one. One frontend owns a directory: its batches run in that process
(`frontend.serving.batches`), and after a restart it takes up the ones it left unfinished. Calls block on
the disk; async callers run them in a thread.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frontend.protocol.batches import Batch, FileObject
from frontend.response_store import state_dir


@dataclass
class StoredFile:
    file: FileObject
    # The tenant that created it (frontend.tenancy), None when API keys are not isolated.
    owner: str | None


@dataclass
class StoredBatch:
    batch: Batch
    # The tenant that created it (frontend.tenancy), None when API keys are not isolated.
    owner: str | None
    # Lifetime of the output and error files the batch will write (its output_expires_after); None: no end.
    output_expiry_s: int | None


def default_files_dir() -> Path:
    """`$TRITONLLM_FILES_DIR`, else files/ in the user's state directory (XDG), beside the response store."""
    if os.environ.get("TRITONLLM_FILES_DIR"):
        return Path(os.environ["TRITONLLM_FILES_DIR"])
    return state_dir() / "files"


def new_id(prefix: str) -> str:
    """`prefix` and 24 hex digits, the first 16 the creation time in ns: ids sort in creation order."""
    return f"{prefix}{time.time_ns():016x}{uuid.uuid4().hex[:8]}"


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _record(obj: FileObject | Batch, owner: str | None, **extra: Any) -> bytes:
    return json.dumps({"object": obj.model_dump(mode="json"), "owner": owner, **extra}).encode()


class FileStore:
    def __init__(self, directory: Path) -> None:
        self.files = directory / "files"
        self.batches = directory / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)

    # Files

    def create_file(
        self, filename: str, purpose: str, data: bytes, owner: str | None, expires_after_s: int | None
    ) -> FileObject:
        file = self._file_object(filename, purpose, len(data), expires_after_s)
        _write_atomically(self.files / file.id, data)
        # The record last: a file is listed only once its bytes are all there.
        _write_atomically(self.files / f"{file.id}.json", _record(file, owner))
        return file

    def adopt_file(
        self, path: Path, filename: str, purpose: str, owner: str | None, expires_after_s: int | None
    ) -> FileObject:
        """Make the complete file at `path` (on this store's disk: a batch's spill_path) a stored file."""
        file = self._file_object(filename, purpose, path.stat().st_size, expires_after_s)
        os.replace(path, self.files / file.id)
        _write_atomically(self.files / f"{file.id}.json", _record(file, owner))
        return file

    def spill_path(self, batch_id: str, kind: str) -> Path:
        """Where a running batch appends its `kind` ("output" or "error") answers until it ends."""
        return self.batches / f"{batch_id}.{kind}.partial"

    @staticmethod
    def _file_object(filename: str, purpose: str, size: int, expires_after_s: int | None) -> FileObject:
        created_at = int(time.time())
        return FileObject(
            id=new_id("file-"),
            bytes=size,
            created_at=created_at,
            expires_at=created_at + expires_after_s if expires_after_s is not None else None,
            filename=filename,
            purpose=purpose,  # type: ignore[arg-type]  # a FilePurpose, checked by the caller
        )

    def get_file(self, file_id: str) -> StoredFile | None:
        """The file's record; None when there is none or it expired (an expired file is deleted here)."""
        record = self._read(self.files, file_id)
        if record is None:
            return None
        file = FileObject.model_validate(record["object"])
        if file.expires_at is not None and file.expires_at <= time.time():
            self.delete_file(file_id)
            return None
        return StoredFile(file, record["owner"])

    def list_files(self) -> list[StoredFile]:
        """Every live file, oldest first."""
        found = [self.get_file(path.stem) for path in sorted(self.files.glob("file-*.json"))]
        return [stored for stored in found if stored is not None]

    def read_file(self, file_id: str) -> bytes:
        return (self.files / file_id).read_bytes()

    def delete_file(self, file_id: str) -> bool:
        record = self.files / f"{file_id}.json"
        if not _is_id(file_id) or not record.exists():
            return False
        # The record first: a file whose bytes are gone is never listed.
        record.unlink(missing_ok=True)
        (self.files / file_id).unlink(missing_ok=True)
        return True

    # Batches

    def save_batch(self, stored: StoredBatch) -> None:
        record = _record(stored.batch, stored.owner, output_expiry_s=stored.output_expiry_s)
        _write_atomically(self.batches / f"{stored.batch.id}.json", record)

    def get_batch(self, batch_id: str) -> StoredBatch | None:
        record = self._read(self.batches, batch_id)
        if record is None:
            return None
        return StoredBatch(Batch.model_validate(record["object"]), record["owner"], record["output_expiry_s"])

    def list_batches(self) -> list[StoredBatch]:
        """Every batch, oldest first."""
        found = [self.get_batch(path.stem) for path in sorted(self.batches.glob("batch_*.json"))]
        return [stored for stored in found if stored is not None]

    @staticmethod
    def _read(directory: Path, object_id: str) -> dict[str, Any] | None:
        if not _is_id(object_id):
            return None
        try:
            record: dict[str, Any] = json.loads((directory / f"{object_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        return record


def _is_id(object_id: str) -> bool:
    """Ids are made here of a prefix and hex digits: anything else (a path, dots) names nothing."""
    prefix, _, rest = object_id.replace("_", "-", 1).partition("-")
    return prefix in ("file", "batch") and rest.isalnum() and rest.isascii()

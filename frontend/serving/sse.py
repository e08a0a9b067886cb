"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` frames ending with `data: [DONE]`."""

from __future__ import annotations

from pydantic import BaseModel

from frontend.errors import APIError

DONE = "data: [DONE]\n\n"


def frame(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def error_frame(error: APIError) -> str:
    """What a stream sends when it fails after the 200 went out; [DONE] still follows."""
    return f"data: {error.body().model_dump_json()}\n\n"

"""OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorInfo(BaseModel):
    message: str
    # OpenAI's error class, e.g. "invalid_request_error", "authentication_error".
    type: str
    # The request field at fault, dotted (e.g. "messages.0.content"), or None.
    param: str | None = None
    # Machine-readable reason, e.g. "model_not_found", "context_length_exceeded".
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo

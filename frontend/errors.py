"""The one exception type the serving layer raises; the app turns it into OpenAI's error body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from frontend.protocol.errors import ErrorInfo, ErrorResponse


class APIError(Exception):
    """A request failure with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        # Extra response headers, e.g. WWW-Authenticate on 401.
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404, f"The model `{model}` does not exist.", "invalid_request_error", "model", "model_not_found"
    )


def unavailable(message: str) -> APIError:
    return APIError(503, message, "service_unavailable_error", None, "service_unavailable")


# Seconds a refused client is asked to wait: about one engine step under load, long enough for the
# queue to move, short enough that an idle server is not left waiting.
RETRY_AFTER_SECONDS = 1


def overloaded(message: str) -> APIError:
    """429 with Retry-After: the engine's waiting queue is full (OpenAI's rate-limit shape)."""
    return APIError(
        429, message, "rate_limit_error", None, "engine_overloaded", {"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def _param(location: tuple[Any, ...]) -> str | None:
    """`("body", "messages", 0, "content")` -> "messages.0.content" (the request field at fault; FastAPI's
    locations start at the body).

    Pydantic also puts union member tags ("str", "list[TextContentPart]", "function-after[...]") into
    locations; they name no request field and are dropped."""
    if location[:1] == ("body",):
        location = location[1:]
    parts = [str(part) for part in location if not _is_union_tag(part)]
    return ".".join(parts) or None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict"))


def validation_error(details: Sequence[Any]) -> APIError:
    """Pydantic's complaints (a validation error's `errors()`) as one OpenAI 400 naming the first field at
    fault."""
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


def body_validation_error(error: ValidationError) -> APIError:
    """validation_error of a body validated outside FastAPI (a batch's lines): its locations made FastAPI's."""
    return validation_error([{**detail, "loc": ("body", *detail["loc"])} for detail in error.errors()])

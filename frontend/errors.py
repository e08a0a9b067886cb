"""The one exception type the serving layer raises; the app turns it into OpenAI's error body."""

from __future__ import annotations

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

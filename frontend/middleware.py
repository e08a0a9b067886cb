"""One ASGI layer in front of every route: request ids, API keys, body size limit and request metrics.

A plain ASGI middleware (not BaseHTTPMiddleware) so streams pass through untouched and the body is read
once: it is buffered here against the size limit, then replayed to the app.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from frontend.errors import APIError
from frontend.metrics import FrontendMetrics
from frontend.tenancy import current_tenant, tenant_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Reachable without an API key: probes and scrapers carry none.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version", "/ping"})
KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/score",
        "/v1/rerank",
        "/v1/models",
        "/v1/responses",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/files",
        "/v1/batches",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/pooling",
        "/classify",
        "/invocations",
        "/score",
        "/rerank",
        "/v2/rerank",
        "/tokenize",
        "/detokenize",
    }
    | OPEN_PATHS
)
RESPONSE_ACTIONS = frozenset({"cancel", "input_items", "tool_outputs"})
# Collections whose objects are addressed by id, and the actions on one: /v1/files/{file_id}/content.
ID_PATHS = {
    "/v1/responses/": ("response_id", RESPONSE_ACTIONS),
    "/v1/files/": ("file_id", frozenset({"content"})),
    "/v1/batches/": ("batch_id", frozenset({"cancel"})),
}
# The path whose body may be as large as a file upload rather than a request.
UPLOAD_PATH = "/v1/files"


def endpoint_label(path: str) -> str:
    """Metric label of a path; unknown paths share one label so scanners cannot blow up cardinality."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    for collection, (name, actions) in ID_PATHS.items():
        if path.startswith(collection):
            rest = path.removeprefix(collection).split("/")
            if len(rest) == 1:
                return f"{collection}{{{name}}}"
            if len(rest) == 2 and rest[1] in actions:
                return f"{collection}{{{name}}}/{rest[1]}"
    return "other"


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        api_keys: tuple[str, ...],
        max_body_bytes: int,
        metrics: FrontendMetrics,
        isolate_api_keys: bool = False,
        max_upload_bytes: int | None = None,
    ):
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        # Tenant id of each key when keys are isolated, else None for all.
        self.tenants = [tenant_of(key) if isolate_api_keys else None for key in api_keys]
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        state = scope.setdefault("state", {})
        state["request_id"] = headers.get("x-request-id") or uuid.uuid4().hex
        label = endpoint_label(scope["path"])
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"],
                    # Read as the response starts: a route may name the request by its body (routes.py).
                    (b"x-request-id", state["request_id"].encode("latin-1")),
                ]
            await send(message)

        tenant_token = None
        try:
            authorized, tenant = self._authenticate(scope["path"], headers)
            if not authorized:
                await self._error(
                    send_with_id,
                    APIError(
                        401,
                        "Invalid or missing API key.",
                        "authentication_error",
                        None,
                        "invalid_api_key",
                        {"WWW-Authenticate": "Bearer"},
                    ),
                )
                return
            limit = self.max_upload_bytes if scope["path"] == UPLOAD_PATH else self.max_body_bytes
            body = await self._read_body(headers, receive, limit)
            if body is None:
                await self._error(
                    send_with_id,
                    APIError(
                        413,
                        f"Request body exceeds {limit} bytes.",
                        "invalid_request_error",
                        None,
                        "request_too_large",
                    ),
                )
                return
            # A file upload is no JSON: its bytes are the file's own.
            if scope["path"] != UPLOAD_PATH and _has_lone_surrogate(body):
                await self._error(
                    send_with_id,
                    APIError(
                        400,
                        "The request body is not valid JSON: it escapes a lone UTF-16 surrogate "
                        "(a \\ud800-\\udfff escape without its pair), which is no character.",
                        "invalid_request_error",
                        None,
                        "invalid_json",
                    ),
                )
                return
            tenant_token = current_tenant.set(tenant)
            await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            if tenant_token is not None:
                current_tenant.reset(tenant_token)
            self.metrics.requests.labels(label, str(status[0])).inc()

    def _authenticate(self, path: str, headers: dict[str, str]) -> tuple[bool, str | None]:
        """(authorized, tenant): open paths and servers without keys admit everyone, as no tenant."""
        if not self.api_keys or path in OPEN_PATHS:
            return True, None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False, None
        # compare_digest against every key, so timing says nothing about which key nearly matched.
        matches = [hmac.compare_digest(token.strip().encode(), key) for key in self.api_keys]
        if not any(matches):
            return False, None
        return True, self.tenants[matches.index(True)]

    @staticmethod
    async def _read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None once it exceeds `limit` (checked on Content-Length and on the bytes)."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    @staticmethod
    async def _error(send: Send, error: APIError) -> None:
        body = error.body().model_dump_json().encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _has_lone_surrogate(body: bytes) -> bool:
    """JSON may escape a surrogate without its pair; Python then holds a string no tokenizer or UTF-8
    encoder accepts. Parsed again only when the body has a surrogate escape at all (rare)."""
    lowered = body.lower()
    if not any(
        escape in lowered
        for escape in (b"\\ud8", b"\\ud9", b"\\uda", b"\\udb", b"\\udc", b"\\udd", b"\\ude", b"\\udf")
    ):
        return False
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON at all: the route's own parsing answers that
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body over once, then passes through (disconnect notices)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed

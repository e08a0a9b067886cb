"""Fixtures of the Responses API tests: the SDK client on the session's frontend, and SDK-shape helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.postgres import PostgresServer, start_postgres
from tests.servers import FrontendServer

# Fields the SDK's parsing helpers add to what the server sent (`responses.stream`, `responses.parse`).
SDK_ADDED = frozenset({"parsed", "parsed_arguments"})


def plain(value: Any) -> Any:
    """A server object as JSON data, without the fields the SDK's parsing helpers add."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items() if key not in SDK_ADDED}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the shared response store."""
    try:
        server = start_postgres()
    except RuntimeError as error:
        pytest.fail(str(error))
    yield server
    server.remove()

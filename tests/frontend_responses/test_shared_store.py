"""Two frontend replicas behind one PostgreSQL response store: what one creates, the other retrieves,
continues, lists and deletes (the OpenAI SDK against real frontends and a real tritonserver)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.postgres import PostgresServer
from tests.servers import TritonServer, start_frontend

pytestmark = pytest.mark.slow


def test_replicas_share_their_responses(
    model_path: Path, triton_server: TritonServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    store_url = postgres.new_database("replicas")
    replicas = [
        start_frontend(
            model_path, triton_server, tmp_path, api_key=None, extra_args=("--response-store", store_url),
            log_name=f"replica-{index}.log",
        )
        for index in range(2)
    ]  # fmt: skip
    try:
        first, second = (
            openai.OpenAI(base_url=replica.base_url, api_key="none", max_retries=0) for replica in replicas
        )
        created = first.responses.create(
            model=MODEL_NAME, input="Name a color.", instructions="Answer in one word.", max_output_tokens=4
        )
        assert second.responses.retrieve(created.id).output_text == created.output_text
        assert [item.id for item in second.responses.input_items.list(created.id)] == [
            item.id for item in first.responses.input_items.list(created.id)
        ]
        # The other replica rebuilds the conversation from the shared store.
        continued = second.responses.create(
            model=MODEL_NAME, input="And another?", previous_response_id=created.id, max_output_tokens=4
        )
        assert continued.previous_response_id == created.id
        alone = second.responses.create(model=MODEL_NAME, input="And another?", max_output_tokens=1)
        assert continued.usage is not None and alone.usage is not None
        assert continued.usage.input_tokens > alone.usage.input_tokens + 5  # the first turn came along
        assert first.responses.retrieve(continued.id).output_text == continued.output_text
        second.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            first.responses.retrieve(created.id)
    finally:
        for replica in replicas:
            replica.process.stop()

"""The generation config's sampling defaults through the OpenAI SDK, against a real frontend and tritonserver.

This frontend reads its defaults from a directory whose generation_config.json (as a model creator writes
one) asks for greedy decoding and 12 new tokens: requests that leave those fields unset get them, fields a
request sets win, except a max_tokens above the directory's 12 (as vLLM, a generation config directory named on
the command line bounds every request), and the default checkpoint's own generation_config.json (no sampling
field) sets none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer, TritonServer, start_frontend

pytestmark = pytest.mark.slow

DEFAULT_TOKENS = 12
POEM = [{"role": "user", "content": "Write a short poem about a lighthouse in winter."}]


@pytest.fixture(scope="module")
def defaults_frontend(
    model_path: Path, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontendServer]:
    log_dir = tmp_path_factory.mktemp("frontend-generation-defaults")
    config_dir = tmp_path_factory.mktemp("generation-config")
    creator = {"do_sample": False, "temperature": 0.0, "max_new_tokens": DEFAULT_TOKENS, "eos_token_id": 2}
    (config_dir / "generation_config.json").write_text(json.dumps(creator))
    args = ("--generation-config", str(config_dir))
    frontend = start_frontend(model_path, triton_server, log_dir, api_key=None, extra_args=args)
    try:
        yield frontend
    finally:
        frontend.process.stop()


@pytest.fixture(scope="module")
def sdk(defaults_frontend: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=defaults_frontend.base_url, api_key="unused", max_retries=0)


def test_unset_fields_take_the_generation_configs_values(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(model=MODEL_NAME, messages=POEM)
    again = sdk.chat.completions.create(model=MODEL_NAME, messages=POEM)
    greedy = sdk.chat.completions.create(model=MODEL_NAME, messages=POEM, temperature=0.0, max_tokens=DEFAULT_TOKENS)
    assert first.usage is not None and first.usage.completion_tokens == DEFAULT_TOKENS
    assert first.choices[0].finish_reason == "length"
    # Sampled at the API's temperature 1, three 12-token poems would not agree with each other.
    assert first.choices[0].message.content == again.choices[0].message.content == greedy.choices[0].message.content

    response = sdk.responses.create(model=MODEL_NAME, input=POEM[0]["content"])
    assert response.usage is not None and response.usage.output_tokens == DEFAULT_TOKENS
    assert response.status == "incomplete" and response.output_text == greedy.choices[0].message.content
    assert response.temperature == 0.0 and response.top_p is None  # the values used, as vLLM reports them


def test_fields_the_request_sets_win(sdk: openai.OpenAI) -> None:
    short = sdk.chat.completions.create(model=MODEL_NAME, messages=POEM, max_tokens=3)
    assert short.usage is not None and short.usage.completion_tokens == 3
    # Seeded sampling at temperature 1.5, three seeds: not all of them the greedy poem.
    texts = {
        sdk.chat.completions.create(model=MODEL_NAME, messages=POEM, temperature=1.5, seed=seed).choices[0].message.content
        for seed in range(3)
    }
    assert len(texts) > 1


def test_the_directorys_max_new_tokens_bounds_every_request(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(model=MODEL_NAME, messages=POEM, max_tokens=40)
    assert chat.usage is not None and chat.usage.completion_tokens == DEFAULT_TOKENS
    assert chat.choices[0].finish_reason == "length"
    completion = sdk.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=40)
    assert completion.usage is not None and completion.usage.completion_tokens == DEFAULT_TOKENS
    response = sdk.responses.create(model=MODEL_NAME, input=POEM[0]["content"], max_output_tokens=40)
    assert response.usage is not None and response.usage.output_tokens == DEFAULT_TOKENS


def test_a_generation_config_without_sampling_fields_sets_nothing(frontend_server: FrontendServer) -> None:
    """The session's frontend reads the default checkpoint's generation_config.json, which sets no sampling
    field: an open max_tokens runs to EOS or the context, not to 12."""
    client = openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)
    answer = client.chat.completions.create(model=MODEL_NAME, messages=POEM, temperature=0.0)
    assert answer.usage is not None and answer.usage.completion_tokens != DEFAULT_TOKENS

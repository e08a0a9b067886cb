"""The llm model's embedding requests: `pooling_parameters` -> the engine's PoolingParams, what may come with
it, and the one response's tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import PoolingParams, RequestOutput, SamplingParams
from tests.triton_adapters.test_generation_request import tensors
from triton_adapters.embedding import embedding_tensors
from triton_adapters.generation_request import parse_generation_request


def pooling(parameters: object, **values: object) -> dict[str, np.ndarray]:
    raw = parameters if isinstance(parameters, str) else json.dumps(parameters)
    return tensors(pooling_parameters=raw, **values)


def test_an_empty_object_asks_for_the_defaults() -> None:
    request = parse_generation_request(pooling({}))
    assert request.params == PoolingParams()
    assert request.prompt_token_ids == [5, 6, 7] and request.num_sequences == 1
    assert not request.stream and request.priority == 0 and request.cache_salt is None and request.lora_name is None
    # An empty string is the empty object, as sampling_parameters' is; nulls are the defaults too.
    assert parse_generation_request(pooling("")).params == PoolingParams()
    assert parse_generation_request(pooling({"dimensions": None, "normalize": None})).params == PoolingParams()


def test_vllm_names_and_the_requests_own_inputs() -> None:
    parameters = {"pooling_type": "MEAN", "normalize": False, "dimensions": 64, "truncate_prompt_tokens": -1}
    request = parse_generation_request(
        pooling(parameters, priority=np.int32(-2), cache_salt="tenant-a", lora_name="sql", stream=True)
    )
    assert request.params == PoolingParams(pooling_type="MEAN", normalize=False, dimensions=64, truncate_prompt_tokens=-1)
    # Streaming changes nothing for a request answered once.
    assert not request.stream
    assert (request.priority, request.cache_salt, request.lora_name) == (-2, "tenant-a", "sql")
    assert parse_generation_request(pooling({}, lora_name="", cache_salt="")).lora_name is None
    brought = parse_generation_request(pooling({}, lora_name="sql", lora_path="/adapters/sql"))
    assert (brought.lora_name, brought.lora_path) == ("sql", "/adapters/sql")


def test_a_generation_keeps_its_sampling_params() -> None:
    request = parse_generation_request(tensors(max_tokens=np.int32(3)))
    assert isinstance(request.params, SamplingParams) and request.params.max_tokens == 3
    assert parse_generation_request(tensors(sampling_parameters=json.dumps({"n": 2}))).num_sequences == 2


@pytest.mark.parametrize(
    "parameters, message",
    [
        ("{not json", "pooling_parameters is not valid JSON"),
        ("[1, 2]", "pooling_parameters must be a JSON object"),
        ({"pooling": "LAST"}, "unknown pooling parameter 'pooling'"),
        ({"temperature": 0}, "unknown pooling parameter 'temperature'"),
        ({"dimensions": "64"}, "parameter 'dimensions' must be an integer"),
        ({"dimensions": 64.0}, "parameter 'dimensions' must be an integer"),
        ({"truncate_prompt_tokens": True}, "parameter 'truncate_prompt_tokens' must be an integer"),
        ({"normalize": "false"}, "parameter 'normalize' must be bool"),
        ({"pooling_type": 1}, "parameter 'pooling_type' must be str"),
        # PoolingParams' own refusals, named as the frontend reads them for the error's param.
        ({"pooling_type": "MAX"}, "parameter 'pooling_type'"),
        ({"dimensions": 0}, "parameter 'dimensions'"),
        ({"truncate_prompt_tokens": 0}, "parameter 'truncate_prompt_tokens'"),
    ],
)
def test_bad_pooling_parameters_are_refused_by_name(parameters: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_generation_request(pooling(parameters))


@pytest.mark.parametrize(
    "values",
    [
        {"max_tokens": np.int32(4)},
        {"temperature": np.float32(0.0)},
        {"sampling_parameters": json.dumps({"lora_name": "sql"})},
        {"stop_words": ["x"]},
        {"return_log_probs": True},
        {"guided_decoding_guide_type": "json"},
        {"exclude_input_in_output": False},
    ],
)
def test_sampling_inputs_are_refused_with_pooling_parameters(values: dict) -> None:
    with pytest.raises(ValueError, match=f"input '{next(iter(values))}' does not apply to an embedding request"):
        parse_generation_request(pooling({}, **values))


def test_the_response_carries_the_vector_and_the_counts() -> None:
    output = RequestOutput(
        request_id="r",
        new_token_ids=[],
        text_delta="",
        num_prompt_tokens=3,
        num_output_tokens=0,
        num_cached_tokens=1,
        finished=True,
        finish_reason="stop",
        stop_reason=None,
        embedding=[0.6, -0.8],
    )
    response = embedding_tensors(output)
    assert set(response) == {"embedding", "request_id", "num_input_tokens", "num_cached_tokens", "finish_reason"}
    assert response["embedding"].dtype == np.float32 and response["embedding"].tolist() == pytest.approx([0.6, -0.8])
    assert response["num_input_tokens"].tolist() == [3] and response["num_cached_tokens"].tolist() == [1]
    assert response["finish_reason"].tolist() == [b"stop"] and response["request_id"].tolist() == [b"r"]

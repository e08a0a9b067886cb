"""Triton tensors (TensorRT-LLM and vllm_backend conventions) -> engine requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triton_adapters.generation_request import UnsupportedParameterError, parse_generation_request


def tensors(**values: object) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"input_ids": np.array([5, 6, 7], dtype=np.int32)}
    for name, value in values.items():
        if isinstance(value, str):
            arrays[name] = np.array([value.encode()], dtype=np.object_)
        elif isinstance(value, list):
            arrays[name] = np.array([item.encode() for item in value], dtype=np.object_)
        else:
            arrays[name] = np.array([value])
    return arrays


def test_defaults_follow_vllm() -> None:
    request = parse_generation_request(tensors())
    assert request.prompt_token_ids == [5, 6, 7]
    assert request.params.max_tokens == 16
    assert request.params.temperature == 1.0
    assert not request.stream and request.exclude_input_in_output and request.return_unchanged_outputs
    assert request.priority == 0 and request.cache_salt is None
    assert not parse_generation_request(tensors(return_unchanged_outputs=False)).return_unchanged_outputs


def test_tensorrt_llm_tensors() -> None:
    request = parse_generation_request(
        tensors(
            max_tokens=np.int32(32),
            stream=True,
            temperature=np.float32(0.5),
            top_k=np.int32(4),
            random_seed=np.uint64(7),
            min_length=np.int32(2),
            stop_words=["\n\n", "END"],
            cache_salt="tenant-a",
            priority=np.int32(-1),
            beam_width=np.int32(1),
            pad_id=np.int32(0),
        )
    )
    params = request.params
    assert (params.max_tokens, params.top_k, params.seed, params.min_tokens) == (32, 4, 7, 2)
    assert params.temperature == pytest.approx(0.5)
    assert params.stop == ["\n\n", "END"]
    assert request.stream and request.cache_salt == "tenant-a" and request.priority == -1


def test_vllm_backend_json_with_string_numbers() -> None:
    sampling = {
        "max_tokens": "20",
        "temperature": "0",
        "top_p": 0.9,
        "ignore_eos": "true",
        "stop": "x",
        "n": 1,
        "stream_interval": "4",
    }
    request = parse_generation_request(tensors(sampling_parameters=json.dumps(sampling)))
    params = request.params
    assert params.max_tokens == 20 and params.temperature == 0.0 and params.top_p == pytest.approx(0.9)
    assert params.ignore_eos and params.stop == ["x"] and params.stream_interval == 4


def test_tensor_wins_over_json() -> None:
    request = parse_generation_request(
        tensors(sampling_parameters=json.dumps({"max_tokens": 5}), max_tokens=np.int32(9))
    )
    assert request.params.max_tokens == 9


def test_lora_name_from_the_tensor_or_vllm_backends_json_key() -> None:
    """The adapter is the request's, not a sampling parameter; the tensor wins, and empty names nothing."""
    assert parse_generation_request(tensors()).lora_name is None
    assert parse_generation_request(tensors(lora_name="sql")).lora_name == "sql"
    keyed = parse_generation_request(tensors(sampling_parameters=json.dumps({"lora_name": "sql", "temperature": 0})))
    assert keyed.lora_name == "sql" and keyed.params.temperature == 0.0
    both = tensors(sampling_parameters=json.dumps({"lora_name": "sql"}), lora_name="chat")
    assert parse_generation_request(both).lora_name == "chat"
    empty = tensors(sampling_parameters=json.dumps({"lora_name": "sql"}), lora_name="")
    assert parse_generation_request(empty).lora_name == "sql"
    assert parse_generation_request(tensors(lora_name="")).lora_name is None
    assert parse_generation_request(tensors(sampling_parameters=json.dumps({"lora_name": ""}))).lora_name is None
    with pytest.raises(ValueError, match="parameter 'lora_name'"):
        parse_generation_request(tensors(sampling_parameters=json.dumps({"lora_name": 3})))
    # A runtime adapter's directory travels beside its name (the engine loads it at its first request).
    brought = parse_generation_request(tensors(lora_name="sql", lora_path="/adapters/sql"))
    assert (brought.lora_name, brought.lora_path) == ("sql", "/adapters/sql")
    assert parse_generation_request(tensors(lora_name="sql", lora_path="")).lora_path is None


@pytest.mark.parametrize(
    "values",
    [
        {"beam_width": np.int32(2)},
        {"sampling_parameters": json.dumps({"use_beam_search": True})},
    ],
)
def test_unsupported_parameters_are_named(values: dict) -> None:
    name = (
        next(iter(json.loads(values["sampling_parameters"])))
        if "sampling_parameters" in values
        else next(iter(values))
    )
    with pytest.raises(UnsupportedParameterError, match=name):
        parse_generation_request(tensors(**values))


def test_penalties_logprobs_and_sequences() -> None:
    sampling = {
        "presence_penalty": "0.5",
        "repetition_penalty": 1.2,
        "logit_bias": {"42": 3, "7": -100},
        "allowed_token_ids": [1, 2, 42],
        "bad_words": "dog",
        "truncate_prompt_tokens": 2,
        "logprobs": 3,
        "prompt_logprobs": 1,
        "n": 2,
        "best_of": "3",
    }
    request = parse_generation_request(
        tensors(
            sampling_parameters=json.dumps(sampling),
            frequency_penalty=np.float32(-0.5),
            bad_words=["cat", ""],
        )
    )
    params = request.params
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.5, 1.2)
    assert params.logit_bias == {42: 3.0, 7: -100.0} and params.allowed_token_ids == [1, 2, 42]
    assert params.bad_words == ["cat"] and params.truncate_prompt_tokens == 2
    assert (params.logprobs, params.prompt_logprobs, params.n, params.best_of) == (3, 1, 2, 3)
    # TensorRT-LLM's return_log_probs asks for the sampled tokens' logprobs.
    assert parse_generation_request(tensors(return_log_probs=True)).params.logprobs == 0
    assert parse_generation_request(tensors(return_log_probs=False)).params.logprobs is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sampling_parameters": "{not json"}, "not valid JSON"),
        ({"sampling_parameters": json.dumps({"bogus": 1})}, "unknown sampling parameter 'bogus'"),
        ({"sampling_parameters": json.dumps({"max_tokens": "many"})}, "max_tokens"),
        # Refusals name their parameter as "parameter 'name'", which the frontend reads for the error's param.
        ({"temperature": np.float32(-1.0)}, "parameter 'temperature'"),
        ({"sampling_parameters": json.dumps({"logit_bias": [1, 2]})}, "parameter 'logit_bias'"),
        ({"sampling_parameters": json.dumps({"n": 3, "best_of": 2})}, "parameter 'best_of'"),
        ({"sampling_parameters": json.dumps({"logprobs": 21})}, "parameter 'logprobs'"),
        ({"repetition_penalty": np.float32(0.0)}, "parameter 'repetition_penalty'"),
        ({"sampling_parameters": json.dumps({"min_tokens": 5, "max_tokens": 2})}, "parameter 'min_tokens'"),
        ({"sampling_parameters": json.dumps({"stop": [""]})}, "parameter 'stop'"),
        ({"sampling_parameters": json.dumps({"seed": -1})}, "parameter 'seed'"),
    ],
)
def test_invalid_values_are_rejected(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_generation_request(tensors(**values))

"""Structured outputs through a real tritonserver: vllm_backend's `sampling_parameters` and TensorRT-LLM's
guided-decoding tensors both constrain the ensemble's output; invalid constraints come back as errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.integration.triton_requests import generate
from tests.servers import TritonServer

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
    },
    "required": ["city", "population"],
}


@pytest.fixture(scope="module")
def chat_prompt(model_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def render(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    return render


def test_sampling_parameters_and_guide_tensors_constrain_the_output(
    triton_server: TritonServer, chat_prompt
) -> None:
    url = triton_server.grpc_url
    schema_reply = generate(
        url,
        {
            "text_input": chat_prompt("Describe Paris as JSON."),
            "stream": True,
            "sampling_parameters": {
                "temperature": 0.0,
                "max_tokens": 60,
                "structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True},
            },
        },
    )
    assert schema_reply.error is None and schema_reply.finish_reason == "stop", schema_reply
    reply = json.loads(schema_reply.text)
    assert set(reply) == {"city", "population"} and isinstance(reply["population"], int)
    choice_reply = generate(
        url,
        {
            "text_input": chat_prompt("Is water wet?"),
            "sampling_parameters": {"temperature": 0.0, "max_tokens": 8, "guided_choice": ["yes", "no"]},
        },
    )
    assert choice_reply.error is None and choice_reply.text in ("yes", "no")
    regex_reply = generate(
        url,
        {
            "text_input": chat_prompt("What year did the Berlin wall fall?"),
            "max_tokens": 8,
            "temperature": 0.0,
            "guided_decoding_guide_type": "regex",
            "guided_decoding_guide": "(19|20)[0-9]{2}",
        },
    )
    assert regex_reply.error is None and re.fullmatch("(19|20)[0-9]{2}", regex_reply.text), regex_reply


def test_invalid_constraints_are_request_errors(triton_server: TritonServer) -> None:
    unsupported = generate(
        triton_server.grpc_url,
        {
            "text_input": "Hi",
            "sampling_parameters": {"structured_outputs": {"json": {"type": "array", "uniqueItems": True}}},
        },
    )
    assert unsupported.error is not None
    assert "unsupported JSON schema feature 'uniqueItems'" in str(unsupported.error)
    bad_type = generate(
        triton_server.grpc_url,
        {"text_input": "Hi", "guided_decoding_guide_type": "lark", "guided_decoding_guide": "start: x"},
    )
    assert bad_type.error is not None and "guided_decoding_guide_type" in str(bad_type.error)
    after = generate(triton_server.grpc_url, {"text_input": "Hi", "max_tokens": 2})
    assert after.error is None and after.num_output_tokens == 2

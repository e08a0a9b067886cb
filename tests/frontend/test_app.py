"""The HTTP surface without Triton: OpenAI error shapes, auth, limits, request ids, local endpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frontend.app import build_app
from frontend.metrics import FrontendMetrics
from frontend.serving.context import ServingContext, checkpoint_context_length, engine_context_length
from frontend.triton_client import TritonClient
from tests.frontend.conftest import API_KEY, MODEL_NAME

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}


def assert_error(response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_missing_or_wrong_key_is_401(offline_client: TestClient) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic unit-key"},
    ):
        response = offline_client.get("/v1/models", headers=headers)
        error = assert_error(response, 401, code="invalid_api_key")
        assert error["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"


def test_probes_need_no_key(offline_client: TestClient) -> None:
    assert offline_client.get("/metrics", headers={"Authorization": ""}).status_code == 200
    assert offline_client.get("/version", headers={"Authorization": ""}).json()["version"]


def test_health_is_503_while_triton_is_unreachable(offline_client: TestClient) -> None:
    assert offline_client.get("/health", headers={"Authorization": ""}).status_code == 503


def test_generation_is_503_while_triton_is_unreachable(offline_client: TestClient) -> None:
    assert_error(offline_client.post("/v1/chat/completions", json=CHAT), 503, code="service_unavailable")
    stream = {"model": MODEL_NAME, "prompt": "x", "stream": True}
    assert_error(offline_client.post("/v1/completions", json=stream), 503)


def test_request_id_is_echoed_or_generated(offline_client: TestClient) -> None:
    assert (
        offline_client.get("/v1/models", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"
    )
    generated = offline_client.get("/v1/models/nope").headers["x-request-id"]
    assert len(generated) == 32
    assert offline_client.get("/v1/models", headers={"Authorization": ""}).headers["x-request-id"]


def test_models_list_and_retrieve(offline_client: TestClient) -> None:
    listing = offline_client.get("/v1/models").json()
    names = [card["id"] for card in listing["data"]]
    assert listing["object"] == "list" and names == [MODEL_NAME, "whisper-base", "whisper-1"]
    assert offline_client.get(f"/v1/models/{MODEL_NAME}").json()["id"] == MODEL_NAME
    assert offline_client.get("/v1/models/whisper-1").json()["root"] == "whisper"
    assert_error(offline_client.get("/v1/models/gpt-9"), 404, "model", "model_not_found")


def test_unknown_model_in_the_body_is_404(offline_client: TestClient) -> None:
    assert_error(offline_client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404, "model")
    assert_error(offline_client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404, "model")


def test_malformed_json_is_400(offline_client: TestClient) -> None:
    response = offline_client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, code="invalid_json")


def test_lone_surrogate_escapes_are_400_and_pairs_are_fine(offline_client: TestClient) -> None:
    json_header = {"content-type": "application/json"}
    lone = offline_client.post("/tokenize", content=b'{"prompt": "a\\ud800b"}', headers=json_header)
    assert_error(lone, 400, code="invalid_json")
    pair = offline_client.post("/tokenize", content=b'{"prompt": "\\ud83c\\udf89"}', headers=json_header)
    assert pair.status_code == 200 and pair.json()["count"] >= 1
    not_utf8 = offline_client.post("/tokenize", content=b'{"prompt": "\xff\xfe"}', headers=json_header)
    assert not_utf8.status_code == 400 and not_utf8.json()["error"]["type"] == "invalid_request_error"


def test_json_without_content_type_is_accepted(offline_client: TestClient) -> None:
    response = offline_client.post("/tokenize", content=b'{"prompt": "hi"}')
    assert response.status_code == 200 and response.json()["count"] == 1
    form = offline_client.post(
        "/tokenize",
        content=b'{"prompt": "hi"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "Content-Type: application/json" in assert_error(form, 400, code="invalid_json")["message"]
    assert_error(offline_client.post("/tokenize", json=[1, 2]), 400, code="invalid_json")
    # A JSON object that breaks a request-level rule is told that rule, not that it is no object.
    neither = assert_error(offline_client.post("/tokenize", json={"model": "m"}), 400, code="invalid_value")
    assert "exactly one of 'prompt' and 'messages'" in neither["message"]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_validation_errors_name_the_param(offline_client: TestClient, fields: dict, param: str) -> None:
    error = assert_error(offline_client.post("/v1/chat/completions", json={**CHAT, **fields}), 400, param)
    assert error["type"] == "invalid_request_error"


def test_completion_validation(offline_client: TestClient) -> None:
    assert_error(offline_client.post("/v1/completions", json={"model": MODEL_NAME}), 400, "prompt")
    bad_ids = {"model": MODEL_NAME, "prompt": [10**9]}
    assert_error(offline_client.post("/v1/completions", json=bad_ids), 400, "prompt")
    assert_error(
        offline_client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "a", "suffix": "b"}),
        400,
        "suffix",
    )


def test_body_over_the_limit_is_413(offline_client: TestClient) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(offline_client.post("/v1/chat/completions", json=big), 413, code="request_too_large")


def test_unknown_route_is_404_in_openai_shape(offline_client: TestClient) -> None:
    assert_error(offline_client.get("/v1/nothing"), 404)


def test_tokenize_and_detokenize(offline_client: TestClient) -> None:
    tokens = offline_client.post("/tokenize", json={"prompt": "The capital of France is"}).json()
    assert tokens["count"] == len(tokens["tokens"]) == 5 and tokens["max_model_len"] is None
    text = offline_client.post("/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "The capital of France is"}
    chat = offline_client.post(
        "/tokenize", json={"messages": [{"role": "user", "content": "hi"}], "return_token_strs": True}
    ).json()
    assert chat["token_strs"][0] == "<|im_start|>" and chat["token_strs"][-1] == "Ċ"
    # A request's own template and the tools it lists count as chat generation would render them.
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    templated = offline_client.post(
        "/tokenize",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [tool],
            "chat_template": "{{ tools[0].function.name }}: {{ messages[0].content }}",
        },
    ).json()
    assert templated["tokens"] == offline_client.post("/tokenize", json={"prompt": "get_weather: hi"}).json()["tokens"]
    assert_error(offline_client.post("/detokenize", json={"tokens": [-1]}), 400, "tokens")
    assert_error(offline_client.post("/tokenize", json={"prompt": "x", "model": "gpt-9"}), 404, "model")


def test_metrics_count_requests_by_endpoint_and_status(offline_client: TestClient) -> None:
    offline_client.get("/v1/models/gpt-9")
    offline_client.get("/v1/responses/resp_missing/input_items")
    offline_client.get("/wp-admin/setup.php")
    text = offline_client.get("/metrics").text
    assert 'frontend_requests_total{endpoint="/v1/models/{model}",status="404"}' in text
    assert 'endpoint="/v1/responses/{response_id}/input_items",status="404"' in text
    assert 'frontend_requests_total{endpoint="other",status="404"}' in text
    assert "# TYPE frontend_time_to_first_token_seconds histogram" in text
    assert "# TYPE frontend_e2e_request_latency_seconds histogram" in text


def test_max_model_len_is_checked_before_triton(offline_context: ServingContext) -> None:
    config = dataclasses.replace(offline_context.config, max_model_len=20)
    # A client of its own: aio gRPC channels belong to the event loop of the TestClient that opened them.
    triton = TritonClient(config.triton_url, config.triton_model)
    app = build_app(
        dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics())
    )
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        # The templated "hi" is 31 tokens: over the limit, refused before Triton (unreachable) is asked.
        error = assert_error(client.post("/v1/chat/completions", json=CHAT), 400, "messages")
        assert error["code"] == "context_length_exceeded"
        short = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 20}
        assert_error(client.post("/v1/completions", json=short), 400, "prompt", "context_length_exceeded")
        assert client.get("/v1/models").json()["data"][0]["max_model_len"] == 20


def test_the_engine_context_length_is_its_max_model_len_else_its_checkpoints(model_path: Path, tmp_path: Path) -> None:
    """What the frontend concludes from the llm model's parameters (Triton's get_model_config), as the
    engine resolves them; a multimodal checkpoint keeps max_position_embeddings in text_config."""
    assert engine_context_length({"max_model_len": "4096", "model": str(tmp_path)}, model_path) == 4096
    # No max_model_len: the served checkpoint's, or the frontend's own where that one is not visible here.
    assert engine_context_length({"max_model_len": ""}, model_path) == 8192
    assert engine_context_length({"model": "models/relative"}, model_path) == 8192
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 32768}}))
    assert engine_context_length({"model": str(tmp_path)}, model_path) == 32768
    assert engine_context_length({"max_model_len": "auto"}, model_path) is None
    for config in ("{}", '{"text_config": null}', "[]", "not json"):
        (tmp_path / "config.json").write_text(config)
        assert engine_context_length({"model": str(tmp_path)}, model_path) is None
    assert checkpoint_context_length(tmp_path / "missing") is None

"""/classify and the cross-encoder /score and /rerank without Triton: what the frontend reads of a classifier's
config.json, vLLM's activation, the request model, the engine requests a cross-encoder's pairs become, and the
refusals made before Triton is asked (the served path is tests/integration/test_classify_served.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from frontend.app import build_app
from frontend.classifier import Classifier, activation, read_classifier
from frontend.metrics import FrontendMetrics
from frontend.protocol.classify import ClassificationRequest
from frontend.protocol.scores import RerankRequest, ScoreRequest
from frontend.serving.context import ServingContext
from frontend.serving.scores import ScoreHandler
from frontend.triton_client import Embedding, EmbeddingInput, TritonClient
from tests.frontend.conftest import API_KEY, MODEL_NAME
from tests.frontend.test_app import assert_error

CROSS_ENCODER = Classifier("Qwen3ForSequenceClassification", ("LABEL_0",))
SENTIMENT = Classifier("LlamaForSequenceClassification", ("negative", "neutral", "positive"))


def write_config(directory: Path, **config: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_the_labels_are_read_as_transformers_reads_them(tmp_path: Path, model_path: Path) -> None:
    named = write_config(
        tmp_path / "named",
        architectures=["Qwen3ForSequenceClassification"],
        id2label={"1": "good", "0": "bad"},
    )
    assert read_classifier(named) == Classifier("Qwen3ForSequenceClassification", ("bad", "good"))
    # transformers leaves its default two labels out of config.json; num_labels alone names none.
    two = write_config(tmp_path / "two", architectures=["MistralForSequenceClassification"])
    assert read_classifier(two) == Classifier("MistralForSequenceClassification", ("LABEL_0", "LABEL_1"))
    counted = write_config(tmp_path / "counted", architectures=["LlamaForSequenceClassification"], num_labels=1)
    assert read_classifier(counted) == Classifier("LlamaForSequenceClassification", ("LABEL_0",))
    # A generative model, and a directory without a config.json, are no classifiers.
    assert read_classifier(model_path) is None
    assert read_classifier(tmp_path / "nowhere") is None


def test_activation_is_vllms_softmax_or_one_labels_sigmoid() -> None:
    logits = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    expected = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    np.testing.assert_allclose(activation(logits), expected, rtol=1e-12)
    # Large logits do not overflow.
    np.testing.assert_allclose(activation(np.array([1000.0, 1000.0])), [0.5, 0.5])
    assert activation(np.array([0.0], dtype=np.float32)).tolist() == [0.5]
    assert activation(np.array([2.0])).tolist() == pytest.approx([1 / (1 + np.exp(-2.0))], rel=1e-12)


def test_classification_requests_take_vllms_fields_only() -> None:
    request = ClassificationRequest.model_validate(
        {"model": "m", "input": ["a", "b"], "truncate_prompt_tokens": 4, "priority": -1, "use_activation": False}
    )
    assert request.pooling_parameters() == {"truncate_prompt_tokens": 4}
    assert ClassificationRequest(input=[1, 2]).pooling_parameters() == {}
    assert ClassificationRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]}).input is None
    # An embedding's fields, and vLLM's deprecated names of use_activation, are refused.
    for fields in ({"encoding_format": "float"}, {"normalize": True}, {"dimensions": 2}, {"softmax": True}, {}):
        with pytest.raises(ValidationError):
            ClassificationRequest.model_validate({"input": "a", **fields} if fields else {})


class FakeTriton:
    """Answers each pooling request with a one-label logit of its token ids, recording each request."""

    def __init__(self) -> None:
        self.requests: list[EmbeddingInput] = []

    async def embed(self, request: EmbeddingInput) -> Embedding:
        self.requests.append(request)
        return Embedding(fake_logit(request.prompt_token_ids), len(request.prompt_token_ids), 0)


def fake_logit(token_ids: list[int]) -> np.ndarray:
    return np.array([(sum(token_ids) % 11 - 5) / 2], dtype=np.float32)


def test_a_cross_encoder_sends_each_pair_as_one_input(offline_context: ServingContext) -> None:
    triton = FakeTriton()
    config = dataclasses.replace(offline_context.config, max_model_len=64, classifier=CROSS_ENCODER)
    context = dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics())  # type: ignore[arg-type]
    handler = ScoreHandler(context)
    documents = ["Paris is in France.", "query", "Paris is in France."]
    reply = asyncio.run(handler.score(ScoreRequest(text_1="query", text_2=documents, priority=2), "score-1"))
    pairs = [context.templater.encode_pair("query", document) for document in documents]
    # Every pair, repeated ones too, is its own input: the texts are joined as the tokenizer joins a pair.
    assert [request.prompt_token_ids for request in triton.requests] == pairs
    assert all(request.priority == 2 and request.pooling == {} for request in triton.requests)
    expected = [float(activation(fake_logit(pair))[0]) for pair in pairs]
    assert [item.score for item in reply.data] == pytest.approx(expected, abs=1e-12)
    assert reply.usage.prompt_tokens == sum(map(len, pairs))

    request = RerankRequest(query="query", documents=documents, top_n=1, truncate_prompt_tokens=3)
    reranked = asyncio.run(handler.rerank(request, "rerank-1"))
    assert triton.requests[-1].pooling == {"truncate_prompt_tokens": 3}
    assert [result.index for result in reranked.results] == [int(np.argmax(expected))]


def test_refusals_before_triton_and_503_without_it(offline_context: ServingContext) -> None:
    def client_for(classifier: Classifier | None) -> TestClient:
        config = dataclasses.replace(offline_context.config, max_model_len=8, classifier=classifier)
        # A client of its own: aio gRPC channels belong to the event loop of the TestClient that opened them.
        triton = TritonClient(config.triton_url, config.triton_model)
        context = dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics())
        return TestClient(build_app(context), headers={"Authorization": f"Bearer {API_KEY}"})

    long = "one two three four five six seven eight nine"
    with client_for(None) as generative:
        error = assert_error(generative.post("/classify", json={"model": MODEL_NAME, "input": "hi"}), 400)
        assert "does not support the Classification API" in error["message"]
    with client_for(SENTIMENT) as classifier:

        def post(path: str, **fields: object):
            return classifier.post(path, json={"model": MODEL_NAME, **fields})

        for path in ("/v1/embeddings", "/pooling"):
            error = assert_error(post(path, input="hi"), 400)
            assert "sequence classifier (LlamaForSequenceClassification)" in error["message"]
        error = assert_error(post("/score", text_1="a", text_2="b"), 400)
        assert "a classifier of 3 labels" in error["message"]
        assert_error(post("/classify", input=""), 400, "input")
        assert_error(post("/classify", input="a", model="gpt-9"), 404, "model", "model_not_found")
        assert_error(post("/classify", input="a", softmax=True), 400, "softmax")
        assert_error(post("/classify", input=["a", long]), 400, "input", "context_length_exceeded")
        assert_error(post("/classify", input=long, truncate_prompt_tokens=4), 503, code="service_unavailable")
        assert 'frontend_requests_total{endpoint="/classify",status="400"}' in classifier.get("/metrics").text
    with client_for(CROSS_ENCODER) as cross_encoder:
        error = assert_error(
            cross_encoder.post("/rerank", json={"query": "a", "documents": ["b", long]}),
            400,
            "documents",
            "context_length_exceeded",
        )
        assert "the pair of query and documents 1 has" in error["message"]
        assert_error(cross_encoder.post("/score", json={"text_1": "a", "text_2": "b"}), 503)

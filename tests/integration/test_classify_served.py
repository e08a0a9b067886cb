"""Sequence classifiers served as README.md says, each on a stack of its own (tritonserver on the cpu-default
profile with `model` a tiny random *ForSequenceClassification checkpoint, and a frontend on the same
directory): /classify answers Hugging Face's softmax probabilities and id2label labels; a one-label classifier
is a cross-encoder, whose /score and /rerank are the sigmoid of Hugging Face's logit of each pair tokenized as a
pair; what a classifier cannot do is refused in OpenAI's shape."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    Qwen3Config,
)

from tests.engine.conftest import torch_threads
from tests.engine_models.tiny_checkpoints import SMALL, save_classifier
from tests.frontend.conftest import MODEL_NAME
from tests.servers import profile_stack

pytestmark = pytest.mark.slow

# SmolLM2's vocabulary, so that its tokenizer (copied beside the weights) serves the tiny checkpoints.
TINY = dict(
    SMALL,
    vocab_size=49152,
    max_position_embeddings=512,
    # No pad token: Hugging Face pools a single sequence's last token whatever it is, as the engine does.
    pad_token_id=None,
)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TEXTS = [
    "The service was quick and the food was excellent.",
    "A long passage about bridges, rivers and the towns built where one meets the other. " * 4,
    "hi",
]
QUERY = "Where is the Eiffel Tower?"
DOCUMENTS = [
    "The Eiffel Tower stands in Paris, on the Champ de Mars.",
    "A recipe for bread: flour, water, salt and yeast.",
    "Paris is the capital of France.",
]
# float32 logits of the engine against Hugging Face's, both on the CPU, through a softmax or sigmoid.
TOLERANCE = 1e-4


@dataclass
class ClassifierStack:
    # The frontend's root URL (/classify, /score and /rerank are served there).
    http: httpx.Client
    # Hugging Face's model of the checkpoint, and its tokenizer.
    reference: Any
    tokenizer: Any

    def logits(self, token_ids: list[int]) -> np.ndarray:
        with torch.inference_mode(), torch_threads(1):
            return self.reference(torch.tensor([token_ids])).logits[0].double().numpy()

    def post(self, path: str, **body: Any) -> httpx.Response:
        return self.http.post(path, json={"model": MODEL_NAME, **body})

    def answer(self, path: str, **body: Any) -> dict[str, Any]:
        response = self.post(path, **body)
        assert response.status_code == 200, response.text
        return response.json()


def serve_classifier(
    config: PretrainedConfig, model_path: Path, folder: Path, name: str
) -> Iterator[ClassifierStack]:
    """The checkpoint of `config` beside SmolLM2's tokenizer, served by a stack of its own."""
    checkpoint = folder / "checkpoint"
    save_classifier(config, checkpoint)
    for file_name in TOKENIZER_FILES:
        shutil.copy(model_path / file_name, checkpoint / file_name)
    reference = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=torch.float32).eval()
    overrides = {"model": str(checkpoint), "max_model_len": 512, "kv_cache_memory": 64 << 20}
    with profile_stack(checkpoint, overrides, folder, name) as (_, frontend):
        with httpx.Client(base_url=frontend.root_url, timeout=120) as http:
            yield ClassifierStack(http, reference, AutoTokenizer.from_pretrained(checkpoint))


# The two checkpoints, each served in turn by the module's `stack` (one stack at a time).
CONFIGS = {
    # Three labels, named by id2label.
    "classifier": lambda: Qwen3Config(**TINY, head_dim=16, id2label=LABELS),
    # One label: a reranker's relevance logit.
    "cross-encoder": lambda: LlamaConfig(**TINY, num_labels=1),
}
CLASSIFIER = pytest.mark.parametrize("stack", ["classifier"], indirect=True)
CROSS_ENCODER = pytest.mark.parametrize("stack", ["cross-encoder"], indirect=True)


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClassifierStack]:
    """The stack of CONFIGS[request.param]: pytest stops one before it starts the next."""
    name = request.param
    yield from serve_classifier(CONFIGS[name](), model_path, tmp_path_factory.mktemp(name), name)


def softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max())
    return exponentials / exponentials.sum()


def sigmoid(logit: float) -> float:
    return float(1.0 / (1.0 + np.exp(-logit)))


def assert_error(response: httpx.Response, status: int, message: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param, error
    assert error["type"] == "invalid_request_error"


@CLASSIFIER
def test_classify_answers_hugging_faces_probabilities_and_labels(stack: ClassifierStack) -> None:
    classifier = stack
    reply = classifier.answer("/classify", input=TEXTS)
    assert reply["id"].startswith("classify-") and reply["object"] == "list" and reply["created"] > 0
    assert reply["model"] == MODEL_NAME
    token_ids = [classifier.tokenizer.encode(text) for text in TEXTS]
    assert reply["usage"] == {"prompt_tokens": sum(map(len, token_ids)), "total_tokens": sum(map(len, token_ids))}
    labels = set()
    for index, (item, ids) in enumerate(zip(reply["data"], token_ids, strict=True)):
        expected = softmax(classifier.logits(ids))
        assert item["index"] == index and item["num_classes"] == 3
        np.testing.assert_allclose(item["probs"], expected, atol=TOLERANCE, rtol=0)
        assert item["label"] == LABELS[int(np.argmax(expected))]
        labels.add(item["label"])
    # One text, token ids as sent, and the raw logits (use_activation false).
    [one] = classifier.answer("/classify", input=TEXTS[2])["data"]
    [raw] = classifier.answer("/classify", input=token_ids[0], use_activation=False)["data"]
    np.testing.assert_allclose(one["probs"], softmax(classifier.logits(token_ids[2])), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(raw["probs"], classifier.logits(token_ids[0]), atol=TOLERANCE, rtol=0)
    # vLLM serves it at the root only.
    assert classifier.post("/v1/classify", input=TEXTS[2]).status_code == 404
    # SageMaker's door takes an `input` body as a classification on a classifier.
    [invoked] = classifier.answer("/invocations", input=TEXTS[2])["data"]
    assert invoked["probs"] == pytest.approx(one["probs"]) and invoked["label"] == one["label"]


@CLASSIFIER
def test_what_a_classifier_cannot_do_is_refused(stack: ClassifierStack) -> None:
    classifier = stack
    # The engine refuses to generate: no LM head.
    chat = classifier.post("/v1/chat/completions", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert_error(chat, 400, "sequence classifier (Qwen3ForSequenceClassification): it has no LM head")
    assert_error(classifier.post("/v1/completions", prompt="hi", max_tokens=4), 400, "it has no LM head")
    # Its pooled output is no embedding; and with three labels it is no cross-encoder.
    assert_error(classifier.post("/v1/embeddings", input="hi"), 400, "does not support the Embeddings API")
    assert_error(classifier.post("/score", text_1="a", text_2="b"), 400, "a classifier of 3 labels")
    # vLLM's deprecated activation switches are not taken: use_activation is.
    assert_error(classifier.post("/classify", input="hi", softmax=False), 400, "unsupported parameter", "softmax")
    # And the stack still classifies.
    assert classifier.answer("/classify", input="hi")["data"][0]["num_classes"] == 3


@CROSS_ENCODER
def test_a_cross_encoder_scores_each_pair_as_hugging_face_does(stack: ClassifierStack) -> None:
    cross_encoder = stack
    def expected(first: str, second: str) -> float:
        [logit] = cross_encoder.logits(cross_encoder.tokenizer(first, second)["input_ids"])
        return sigmoid(logit)

    one_to_many = cross_encoder.answer("/score", text_1=QUERY, text_2=DOCUMENTS)
    np.testing.assert_allclose(
        [item["score"] for item in one_to_many["data"]],
        [expected(QUERY, document) for document in DOCUMENTS],
        atol=TOLERANCE,
        rtol=0,
    )
    pair_tokens = [len(cross_encoder.tokenizer(QUERY, document)["input_ids"]) for document in DOCUMENTS]
    assert one_to_many["usage"]["prompt_tokens"] == sum(pair_tokens)
    # N:N pairs element-wise, at /v1/score.
    firsts = [DOCUMENTS[1], QUERY, DOCUMENTS[0]]
    paired = cross_encoder.answer("/v1/score", text_1=firsts, text_2=DOCUMENTS)
    np.testing.assert_allclose(
        [item["score"] for item in paired["data"]],
        [expected(a, b) for a, b in zip(firsts, DOCUMENTS, strict=True)],
        atol=TOLERANCE,
        rtol=0,
    )

    reranked = cross_encoder.answer("/rerank", query=QUERY, documents=DOCUMENTS, top_n=2)
    scores = [expected(QUERY, document) for document in DOCUMENTS]
    order = sorted(range(len(DOCUMENTS)), key=lambda index: scores[index], reverse=True)[:2]
    assert [result["index"] for result in reranked["results"]] == order
    for result in reranked["results"]:
        assert result["document"]["text"] == DOCUMENTS[result["index"]]
        assert result["relevance_score"] == pytest.approx(scores[result["index"]], abs=TOLERANCE)
    assert reranked["usage"] == {"total_tokens": sum(pair_tokens)}

    # /classify on one label: the sigmoid of its logit, vLLM's activation there.
    [item] = cross_encoder.answer("/classify", input=QUERY)["data"]
    [logit] = cross_encoder.logits(cross_encoder.tokenizer.encode(QUERY))
    assert item["num_classes"] == 1 and item["label"] == "LABEL_0"
    assert item["probs"] == pytest.approx([sigmoid(logit)], abs=TOLERANCE)

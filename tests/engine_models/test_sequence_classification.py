"""Sequence classifiers (*ForSequenceClassification): the decoder under a classification head, loaded from tiny
random checkpoints. A pooling request answers with the head's logits of the last token, equal to Hugging
Face's logits across batched and chunked prefills and prefix-cache hits; generation and embedding-only
parameters are refused; the labels are counted as transformers counts them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from engine import EngineConfig, InvalidRequestError, LLMEngine, PoolingParams, SamplingParams
from engine.models import read_spec
from tests.engine.conftest import torch_threads
from tests.engine_models.tiny_checkpoints import SMALL, random_sequences, save_classifier

# No pad token: Hugging Face then pools a single sequence's last token whatever it is.
BASE = dict(SMALL, pad_token_id=None)
# 40 tokens prefill in three chunks under the 16-token step budget; the first prompt comes twice, the second
# copy finding the first's full blocks in the prefix cache.
PROMPT_LENGTHS = [40, 7, 23, 1]
STEP_BUDGET = 16


@dataclass(frozen=True)
class ClassifierCase:
    name: str
    make_config: Callable[[], PretrainedConfig]
    num_labels: int


CASES = [
    # Two labels, transformers' default: config.json then names none. A tied config (the causal LM it came
    # from) with no LM head to tie.
    ClassifierCase("qwen3-tied", lambda: Qwen3Config(**BASE, head_dim=16, tie_word_embeddings=True), 2),
    # One label: a reward model or cross-encoder.
    ClassifierCase("llama-bias", lambda: LlamaConfig(**BASE, attention_bias=True, mlp_bias=True, num_labels=1), 1),
    ClassifierCase("qwen2", lambda: Qwen2Config(**BASE, num_labels=3), 3),
    ClassifierCase("mistral-sliding", lambda: MistralConfig(**BASE, sliding_window=5, num_labels=3), 3),
]


@dataclass
class Classifier:
    path: Path
    hf_model: PreTrainedModel
    num_labels: int


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.name)
def classifier(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    case: ClassifierCase = request.param
    path = tmp_path_factory.mktemp(case.name)
    return Classifier(path, save_classifier(case.make_config(), path), case.num_labels)


def make_engine(checkpoint: Path, tokenizer: Path, **overrides: object) -> LLMEngine:
    """The classifier on the CPU in float32; tiny checkpoints borrow SmolLM2's tokenizer (eos id 2 in both)."""
    settings: dict = {
        "model": str(checkpoint),
        "tokenizer": str(tokenizer),
        "device": "cpu",
        "dtype": "float32",
        "max_model_len": 128,
        "kv_cache_memory": 4 << 20,
        "max_num_batched_tokens": STEP_BUDGET,
    }
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def hf_logits(model: PreTrainedModel, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0].float()


def test_logits_match_hugging_face(classifier: Classifier, model_path: Path) -> None:
    spec = read_spec(classifier.path, torch.float32)
    assert spec.num_labels == classifier.num_labels
    engine = make_engine(classifier.path, model_path)
    assert engine.runner.model.lm_head is None and engine.runner.num_blocks > 0
    prompts = random_sequences(PROMPT_LENGTHS, SMALL["vocab_size"], seed=5)
    logits = engine.embed(prompts + prompts[:1])
    assert engine.stats().prefix_cache_hit_tokens >= 32  # the repeated prompt's two full blocks
    for prompt, got in zip(prompts + prompts[:1], logits, strict=True):
        assert len(got) == classifier.num_labels
        torch.testing.assert_close(torch.tensor(got), hf_logits(classifier.hf_model, prompt), atol=1e-4, rtol=0)


def test_a_classifier_refuses_generation_and_embedding_parameters(model_path: Path, tmp_path: Path) -> None:
    save_classifier(LlamaConfig(**BASE, num_labels=1), tmp_path)
    engine = make_engine(tmp_path, model_path)
    with pytest.raises(InvalidRequestError, match=r"sequence classifier \(LlamaForSequenceClassification\).*no LM head"):
        engine.add_request("generate", [5, 6, 7], SamplingParams(max_tokens=2))
    refusals = [
        (PoolingParams(pooling_type="MEAN"), "'pooling_type' is MEAN"),
        (PoolingParams(dimensions=1), "'dimensions' applies to embeddings"),
        (PoolingParams(normalize=True), "'normalize' applies to embeddings"),
    ]
    for params, message in refusals:
        with pytest.raises(InvalidRequestError, match=message):
            engine.add_request("pool", [5, 6, 7], params)
    # LAST, named or not, and truncation are the classifier's own.
    prompt = [9, 5, 6, 7]
    assert engine.embed([prompt], PoolingParams(pooling_type="LAST")) == engine.embed([prompt])
    assert engine.embed([prompt], PoolingParams(truncate_prompt_tokens=3)) == engine.embed([prompt[1:]])
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [({"id2label": {"0": "bad", "1": "ok", "2": "good"}}, 3), ({"num_labels": 4}, 4), ({}, 2)],
)
def test_labels_are_counted_as_transformers_counts_them(
    tmp_path: Path, labels: dict[str, object], expected: int
) -> None:
    config = LlamaConfig(**BASE)
    config.architectures = ["LlamaForSequenceClassification"]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    data = {key: value for key, value in saved.items() if key not in ("id2label", "label2id")}
    (tmp_path / "config.json").write_text(json.dumps({**data, **labels}))
    assert read_spec(tmp_path, torch.float32).num_labels == expected

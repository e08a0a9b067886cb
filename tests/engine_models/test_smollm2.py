"""The real default checkpoint (SmolLM2-135M-Instruct, fp32) against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from engine.models import CausalLM, load_model
from tests.engine_models.paged_batch import PagedSequences

PROMPT = (
    "<|im_start|>user\nWrite one short sentence that explains why the sky looks blue during the day but red at sunset."
    "<|im_end|>\n<|im_start|>assistant\n"
)
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def ours(model_path: Path) -> CausalLM:
    return load_model(model_path, torch.float32, torch.device("cpu"))


@pytest.fixture(scope="module")
def hf_model(model_path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def prompt_ids(model_path: Path) -> list[int]:
    ids: list[int] = AutoTokenizer.from_pretrained(model_path)(PROMPT)["input_ids"]
    assert 25 <= len(ids) <= 40, len(ids)
    return ids


def test_spec(ours: CausalLM) -> None:
    spec = ours.spec
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.hidden_size) == (
        30,
        9,
        3,
        64,
        576,
    )
    assert (spec.vocab_size, spec.max_position_embeddings, spec.eos_token_ids) == (49152, 8192, (2,))
    assert spec.flags.tie_embeddings and not spec.flags.qk_norm and spec.rope.theta == 100000.0


def test_prompt_logits_and_greedy_continuation_match_hf(
    ours: CausalLM, hf_model: PreTrainedModel, prompt_ids: list[int]
) -> None:
    with torch.inference_mode():
        generated = hf_model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2
        )[0].tolist()
        expected = hf_model(torch.tensor([generated])).logits[0]
    continuation = generated[len(prompt_ids) :]
    assert len(continuation) == NEW_TOKENS

    paged = PagedSequences(ours.spec, [generated], block_size=16, seed=7)
    schedule = [len(prompt_ids)] + [1] * (NEW_TOKENS - 1)
    rows = []
    with torch.inference_mode():
        for count in schedule:
            step = paged.step({0: count})
            rows.append(ours.compute_logits(ours(step.input_ids, step.positions, paged.kv_cache, step.attn)))
    logits = torch.cat(rows)
    n = len(generated) - 1
    torch.testing.assert_close(logits, expected[:n], atol=1e-3, rtol=0)
    assert torch.equal(logits.argmax(-1), expected[:n].argmax(-1))
    # Our greedy choice after the prompt and after each decoded token is HF's generated continuation.
    assert logits[len(prompt_ids) - 1 :].argmax(-1).tolist() == continuation

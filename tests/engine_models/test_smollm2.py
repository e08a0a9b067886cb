"""The real default checkpoint (SmolLM2-135M-Instruct) against transformers: fp32 to within 1e-3, and bf16
(the CPU engine's prepacked weights and C++ kernels) no further from fp32 than transformers' own bf16."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from engine.models import CausalLM, load_model, packed_gemm
from tests.engine_models.paged_batch import PagedSequences, paged_logits
from tests.engine_models.rounded_cache import FP8RoundedCache

PROMPT = (
    "<|im_start|>user\nWrite one short sentence that explains why the sky looks blue during the day but red at sunset."
    "<|im_end|>\n<|im_start|>assistant\n"
)
NEW_TOKENS = 8
# Decodes of the rounding comparisons (bf16 model, bf16 KV cache).
ROUNDING_TOKENS = 16


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


@dataclass
class RoundingReference:
    """HF's greedy continuation of the prompt, and HF's float32 and bf16 logits along it."""

    generated: list[int]
    float32_logits: torch.Tensor
    bfloat16_logits: torch.Tensor


@pytest.fixture(scope="module")
def rounding_reference(hf_model: PreTrainedModel, model_path: Path, prompt_ids: list[int]) -> RoundingReference:
    hf_bf16 = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        generated = hf_model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=ROUNDING_TOKENS, do_sample=False, pad_token_id=2
        )[0].tolist()
        n = len(generated) - 1
        reference = hf_model(torch.tensor([generated])).logits[0, :n]
        hf_rounded = hf_bf16(torch.tensor([generated])).logits[0, :n].float()
    return RoundingReference(generated, reference, hf_rounded)


def test_bfloat16_is_as_close_to_float32_as_hf_bfloat16(
    rounding_reference: RoundingReference, model_path: Path, prompt_ids: list[int]
) -> None:
    """bf16 logits cannot match fp32's to 1e-3; what they can do is round no worse than transformers' bf16
    does. Our bf16 model as the CPU engine runs it (weights prepacked where oneDNN takes bf16, decodes in
    the C++ kernel over the transposed bf16 cache), through a prompt and 16 decodes."""
    ours_bf16 = load_model(model_path, torch.bfloat16, torch.device("cpu"))
    if "onednn" in packed_gemm.available_formats(torch.bfloat16):
        ours_bf16.pack_weights("onednn")
    logits = paged_logits(ours_bf16, rounding_reference.generated, len(prompt_ids), torch.bfloat16)
    reference, hf_rounded = rounding_reference.float32_logits, rounding_reference.bfloat16_logits
    hf_error = (hf_rounded - reference).abs().mean().item()
    our_error = (logits - reference).abs().mean().item()
    assert our_error <= 1.25 * hf_error, (our_error, hf_error)  # measured: 0.120 against 0.114
    agree = (logits.argmax(-1) == hf_rounded.argmax(-1)).float().mean().item()
    assert agree >= 0.95, agree


def test_a_bfloat16_kv_cache_under_float32_stays_closer_to_float32_than_hf_bfloat16(
    ours: CausalLM, rounding_reference: RoundingReference, prompt_ids: list[int]
) -> None:
    """kv_cache_dtype=bfloat16 with the float32 model: only the cached K/V are rounded, so the logits stay far
    closer to float32's than a whole bf16 model's; through a prompt and 16 decodes in the C++ kernels."""
    generated = rounding_reference.generated
    logits = paged_logits(ours, generated, len(prompt_ids), torch.bfloat16)
    assert logits.dtype == torch.float32
    reference = rounding_reference.float32_logits
    hf_error = (rounding_reference.bfloat16_logits - reference).abs().mean().item()
    our_error = (logits - reference).abs().mean().item()
    assert our_error <= 0.5 * hf_error, (our_error, hf_error)  # measured: 0.020 against 0.118
    # The greedy continuation is float32's.
    assert logits[len(prompt_ids) - 1 :].argmax(-1).tolist() == generated[len(prompt_ids) :]



@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_an_fp8_kv_cache_matches_hf_attending_over_the_same_rounded_kv(
    ours: CausalLM, hf_model: PreTrainedModel, prompt_ids: list[int], cache_dtype: torch.dtype
) -> None:
    """kv_cache_dtype=fp8 under the float32 model, through a prompt and 16 decodes in the C++ kernels, against
    HF's float32 model whose cache rounds K/V to the same fp8 format: the same greedy continuation and the same
    choice at every position. Not to float32's precision: the layers' float32 differences (~1e-5) put a few
    K/V values on the other side of an fp8 rounding boundary, which grows layer by layer (layers 0 and 1
    store identical bytes, the last ~15% different ones), yet our logits stay several times closer to that
    oracle than the rounding moves it from float32 (measured 0.072 against 0.326 for e4m3, 0.189 against
    0.650 for e5m2)."""
    with torch.inference_mode():
        generated = hf_model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=ROUNDING_TOKENS, do_sample=False, pad_token_id=2,
            past_key_values=FP8RoundedCache(cache_dtype),
        )[0].tolist()  # fmt: skip
        n = len(generated) - 1
        expected = hf_model(torch.tensor([generated]), past_key_values=FP8RoundedCache(cache_dtype)).logits[0, :n]
        unrounded = hf_model(torch.tensor([generated])).logits[0, :n]
    logits = paged_logits(ours, generated, len(prompt_ids), cache_dtype)
    assert logits[len(prompt_ids) - 1 :].argmax(-1).tolist() == generated[len(prompt_ids) :]
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    our_error = (logits - expected).abs().mean().item()
    rounding_error = (expected - unrounded).abs().mean().item()
    assert our_error < 0.4 * rounding_error, (our_error, rounding_error)

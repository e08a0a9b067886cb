"""fp8 KV cache scales, calibrated in a checkpoint (vLLM's k_scale / v_scale) or measured on the first forward
(vLLM's calculate_kv_scales), against transformers attending over the same scaled, rounded K/V.

The model is a tiny random Qwen2 (head size 64, so decodes run in the C++ kernel) whose keys and values are
made AMPLIFY times larger, the queries and the output projection compensating: the same float32 model, but
keys and values in the thousands, as Qwen2's biased keys are. An unscaled e4m3 cache saturates them at 448;
scales calibrated from the prompt keep them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from engine.models import CausalLM, load_model
from tests.engine_models.paged_batch import paged_logits
from tests.engine_models.rounded_cache import FP8RoundedCache

AMPLIFY = 3000.0
E4M3_MAX = 448.0
PROMPT_LENGTH = 40
NEW_TOKENS = 12
LAYERS = 2


@pytest.fixture(scope="module")
def amplified(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, Path, list[tuple[float, float]]]:
    """The HF model, its checkpoint with calibrated scales (as compressed-tensors names them), the scales."""
    config = Qwen2Config(
        hidden_size=128, intermediate_size=192, num_hidden_layers=LAYERS, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=256, max_position_embeddings=128, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            attention = layer.self_attn
            for projection in (attention.k_proj, attention.v_proj):
                projection.weight *= AMPLIFY
                projection.bias.normal_(0, 0.5 * AMPLIFY)
            attention.q_proj.weight /= AMPLIFY
            attention.q_proj.bias /= AMPLIFY
            attention.o_proj.weight /= AMPLIFY
    # Calibration: the largest key and value each layer's projections give over the prompt, with room
    # for rotation (a rotated pair's element reaches sqrt(2) of the larger one).
    peaks: dict[tuple[int, int], float] = {}
    hooks = [
        projection.register_forward_hook(
            lambda _module, _inputs, output, key=(index, kind): peaks.__setitem__(key, output.abs().max().item())
        )
        for index, layer in enumerate(model.model.layers)
        for kind, projection in enumerate((layer.self_attn.k_proj, layer.self_attn.v_proj))
    ]
    with torch.inference_mode():
        model(torch.arange(PROMPT_LENGTH)[None] % 256)
    for hook in hooks:
        hook.remove()
    # As the checkpoint holds them: float32.
    scales = [
        (torch.tensor(1.5 * peaks[index, 0] / E4M3_MAX).item(), torch.tensor(1.1 * peaks[index, 1] / E4M3_MAX).item())
        for index in range(LAYERS)
    ]
    directory = tmp_path_factory.mktemp("qwen2-kv-scales")
    model.save_pretrained(directory)
    tensors = load_file(directory / "model.safetensors")
    for index, (k_scale, v_scale) in enumerate(scales):
        tensors[f"model.layers.{index}.self_attn.k_scale"] = torch.tensor(k_scale)
        tensors[f"model.layers.{index}.self_attn.v_scale"] = torch.tensor(v_scale)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return model, directory, scales


def test_calibrated_scales_keep_amplified_keys_that_an_unscaled_fp8_cache_saturates(
    amplified: tuple[PreTrainedModel, Path, list[tuple[float, float]]],
) -> None:
    hf_model, checkpoint, scales = amplified
    ours = load_model(checkpoint, torch.float32, torch.device("cpu"))
    assert layer_scales(ours) == scales
    prompt = (torch.arange(PROMPT_LENGTH) % 256).tolist()
    assert_matches_scaled_oracle(ours, hf_model, prompt, scales)
    # Caches of other dtypes never use the scales.
    scaled_model = load_model(checkpoint, torch.float32, torch.device("cpu"))
    generated = prompt + [0] * NEW_TOKENS
    with torch.inference_mode():
        exact = hf_model(torch.tensor([generated])).logits[0, : len(generated) - 1]
    torch.testing.assert_close(paged_logits(scaled_model, generated, PROMPT_LENGTH, torch.float32), exact, atol=1e-4, rtol=1e-4)


def test_scales_measured_on_the_first_forward(
    amplified: tuple[PreTrainedModel, Path, list[tuple[float, float]]], tmp_path: Path
) -> None:
    hf_model, checkpoint, _ = amplified
    ours = load_model(rewritten(checkpoint, tmp_path, {}), torch.float32, torch.device("cpu"))
    for layer in ours.attention_layers():
        layer.kv_scaled = layer.calculate_kv_scales = True
    prompt = (torch.arange(PROMPT_LENGTH) % 256).tolist()
    paged_logits(ours, prompt + [0], PROMPT_LENGTH, torch.float8_e4m3fn)  # the prompt's forward only
    measured = layer_scales(ours)
    # The largest key any rotation can make (the norm of a rotation pair: element i with i + d/2) is
    # brought to 200, the largest value to 100 (vLLM's constants).
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    hooks = [
        projection.register_forward_hook(
            lambda _module, _inputs, output, key=(index, kind): outputs.__setitem__(key, output)
        )
        for index, layer in enumerate(hf_model.model.layers)
        for kind, projection in enumerate((layer.self_attn.k_proj, layer.self_attn.v_proj))
    ]
    with torch.inference_mode():
        hf_model(torch.tensor([prompt]))
    for hook in hooks:
        hook.remove()
    head_dim = hf_model.config.hidden_size // hf_model.config.num_attention_heads
    expected = []
    for index in range(LAYERS):
        pairs = outputs[index, 0].view(PROMPT_LENGTH, -1, 2, head_dim // 2)
        expected.append((pairs.norm(dim=-2).max().item() / 200, outputs[index, 1].abs().max().item() / 100))
    # Later layers' inputs went through attention over the rounded cache already (the reference's did not).
    assert measured[0] == pytest.approx(expected[0], rel=1e-5)
    assert measured == [pytest.approx(scales, rel=1e-3) for scales in expected]
    assert not any(layer.calculate_kv_scales for layer in ours.attention_layers())
    # Kept from then on: the whole generation is attended over keys and values scaled by them.
    assert_matches_scaled_oracle(ours, hf_model, prompt, measured)
    assert layer_scales(ours) == measured


def layer_scales(model: CausalLM) -> list[tuple[float, float]]:
    return [(layer.k_scale.item(), layer.v_scale.item()) for layer in model.attention_layers()]


def assert_matches_scaled_oracle(
    ours: CausalLM, hf_model: PreTrainedModel, prompt: list[int], scales: list[tuple[float, float]]
) -> None:
    """Ours over an e4m3 cache along the oracle's greedy continuation: the oracle's logits, where an unscaled
    cache's saturate."""
    with torch.inference_mode():
        generated = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2,
            past_key_values=FP8RoundedCache(torch.float8_e4m3fn, scales),
        )[0].tolist()  # fmt: skip
        n = len(generated) - 1
        expected = hf_model(torch.tensor([generated]), past_key_values=FP8RoundedCache(torch.float8_e4m3fn, scales))
        saturated = hf_model(torch.tensor([generated]), past_key_values=FP8RoundedCache(torch.float8_e4m3fn))
        exact = hf_model(torch.tensor([generated])).logits[0, :n]
    expected_logits, saturated_logits = expected.logits[0, :n], saturated.logits[0, :n]
    logits = paged_logits(ours, generated, PROMPT_LENGTH, torch.float8_e4m3fn)
    assert logits[PROMPT_LENGTH - 1 :].argmax(-1).tolist() == generated[PROMPT_LENGTH:]
    our_error = (logits - expected_logits).abs().mean().item()
    rounding_error = (expected_logits - exact).abs().mean().item()
    saturation_error = (saturated_logits - exact).abs().mean().item()
    assert our_error < 0.4 * rounding_error, (our_error, rounding_error)  # measured: 5e-8 against 1.2e-3
    assert rounding_error < 0.1 * saturation_error, (rounding_error, saturation_error)  # 1.2e-3 against 0.105
    # The same model ignoring its scales saturates as the unscaled oracle does.
    for layer in ours.attention_layers():
        layer.kv_scaled = False
    unscaled = paged_logits(ours, generated, PROMPT_LENGTH, torch.float8_e4m3fn)
    assert (unscaled - saturated_logits).abs().mean().item() < 0.4 * rounding_error
    for layer in ours.attention_layers():
        layer.kv_scaled = True


def rewritten(checkpoint: Path, directory: Path, scales: dict[str, torch.Tensor]) -> Path:
    """A copy of `checkpoint` whose scale tensors are `scales` instead."""
    tensors = {name: tensor for name, tensor in load_file(checkpoint / "model.safetensors").items() if "scale" not in name}
    save_file(tensors | scales, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text((checkpoint / "config.json").read_text())
    return directory


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        # AutoFP8: one scale for keys and values.
        ({"self_attn.kv_scale": 0.5}, (0.5, 0.5)),
        # Older exports: the projections' output scales.
        ({"self_attn.k_proj.output_scale": 0.5, "self_attn.v_proj.output_scale": 0.25}, (0.5, 0.25)),
        ({"self_attn.attn.k_scale": 2.0, "self_attn.attn.v_scale": 4.0}, (2.0, 4.0)),
        # ModelOpt; the query and probability scales of fp8 attention arithmetic are skipped.
        ({"self_attn.k_proj.k_scale": 0.5, "self_attn.v_proj.v_scale": 0.25, "self_attn.q_scale": 3.0,
          "self_attn.prob_scale": 3.0}, (0.5, 0.25)),  # fmt: skip
        # A checkpoint giving one of the two leaves the other at 1.
        ({"self_attn.k_scale": 0.125}, (0.125, 1.0)),
    ],
)
def test_every_naming_of_the_scales_loads(
    amplified: tuple[PreTrainedModel, Path, list[tuple[float, float]]], tmp_path: Path,
    names: dict[str, float], expected: tuple[float, float],
) -> None:  # fmt: skip
    scales = {f"model.layers.{i}.{name}": torch.tensor([value]) for name, value in names.items() for i in range(LAYERS)}
    model = load_model(rewritten(amplified[1], tmp_path, scales), torch.float32, torch.device("cpu"))
    assert layer_scales(model) == [expected] * LAYERS


@pytest.mark.parametrize("value", [torch.tensor(0.0), torch.tensor(-1.0), torch.tensor(float("inf")), torch.ones(2)])
def test_a_scale_that_is_not_one_positive_number_is_refused(
    amplified: tuple[PreTrainedModel, Path, list[tuple[float, float]]], tmp_path: Path, value: torch.Tensor
) -> None:
    checkpoint = rewritten(amplified[1], tmp_path, {"model.layers.1.self_attn.v_scale": value})
    with pytest.raises(ValueError, match="model.layers.1.self_attn.v_scale must hold one positive finite"):
        load_model(checkpoint, torch.float32, torch.device("cpu"))

"""Rope config parsing (both spellings) and cos/sin caches against transformers' own rope code."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from engine.models.rope import build_cos_sin_cache, parse_rope_config, rope_inv_freq

HEAD_DIM = 32
MAX_POSITIONS = 256
BASE = dict(hidden_size=128, num_attention_heads=4, head_dim=HEAD_DIM, max_position_embeddings=MAX_POSITIONS)

SCALED = {
    "linear": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 50000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn-mscale": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "mscale": 0.707,
        "mscale_all_dim": 0.5,
        "beta_fast": 16,
        "beta_slow": 2,
    },
    "yarn-attention-factor-untruncated": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 2.0,
        "original_max_position_embeddings": 128,
        "attention_factor": 1.3,
        "truncate": False,
    },
}


def hf_config(rope_parameters: dict[str, Any]) -> LlamaConfig:
    return LlamaConfig(**BASE, rope_parameters=dict(rope_parameters))


def ours(config: LlamaConfig) -> Any:
    return parse_rope_config(config.to_dict(), HEAD_DIM, MAX_POSITIONS)


@pytest.mark.parametrize("name", sorted(SCALED))
def test_scaled_inv_freq_matches_transformers_init_functions(name: str) -> None:
    config = hf_config(SCALED[name])
    expected_inv_freq, expected_factor = ROPE_INIT_FUNCTIONS[SCALED[name]["rope_type"]](config)
    inv_freq, factor = rope_inv_freq(ours(config))
    torch.testing.assert_close(inv_freq, expected_inv_freq, atol=0, rtol=1e-6)
    assert factor == pytest.approx(expected_factor, rel=1e-12)


@pytest.mark.parametrize("name", ["default", *sorted(SCALED)])
def test_cache_matches_hf_rotary_module(name: str) -> None:
    """Our cache rows equal the (cos, sin) HF's rotary module produces at every position."""
    config = hf_config(SCALED.get(name, {"rope_type": "default", "rope_theta": 20000.0}))
    rope = ours(config)
    cache = build_cos_sin_cache(rope, torch.device("cpu"))
    positions = torch.arange(rope.max_position)[None]
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions)
    half = HEAD_DIM // 2
    assert cache.dtype == torch.float32 and cache.shape == (rope.max_position, HEAD_DIM)
    torch.testing.assert_close(cache[:, :half], cos[0, :, :half], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache[:, half:], sin[0, :, :half], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("legacy", "current"),
    [
        ({"rope_theta": 5e5}, {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}),
        (
            {"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}},
            {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
        ),
        (
            {
                "rope_theta": 1e6,
                "partial_rotary_factor": 0.5,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
            },
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 1e6,
                    "factor": 4.0,
                    "partial_rotary_factor": 0.5,
                    "original_max_position_embeddings": MAX_POSITIONS,
                }
            },
        ),
        (
            {
                "rope_theta": 5e4,
                "rope_scaling": {k: v for k, v in SCALED["llama3"].items() if k != "rope_theta"},
            },
            {"rope_parameters": SCALED["llama3"]},
        ),
    ],
)
def test_legacy_and_rope_parameters_forms_agree(legacy: dict[str, Any], current: dict[str, Any]) -> None:
    old = parse_rope_config(legacy, HEAD_DIM, MAX_POSITIONS)
    new = parse_rope_config(current, HEAD_DIM, MAX_POSITIONS)
    assert old == new
    torch.testing.assert_close(
        build_cos_sin_cache(old, torch.device("cpu")), build_cos_sin_cache(new, torch.device("cpu"))
    )


def test_partial_rotary_and_yarn_extended_length() -> None:
    rope = parse_rope_config(
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "partial_rotary_factor": 0.25,
                "original_max_position_embeddings": 100,
            }
        },
        HEAD_DIM,
        MAX_POSITIONS,
    )
    assert rope.rotary_dim == HEAD_DIM // 4
    # The table covers the extended context, not just max_position_embeddings.
    assert build_cos_sin_cache(rope, torch.device("cpu")).shape == (400, HEAD_DIM // 4)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "mrope"])
def test_unsupported_rope_types_are_rejected(rope_type: str) -> None:
    with pytest.raises(
        ValueError, match=f"rope type '{rope_type}' is not supported; supported: default, linear"
    ):
        parse_rope_config({"rope_scaling": {"type": rope_type, "factor": 2.0}}, HEAD_DIM, MAX_POSITIONS)


def test_scaled_rope_without_factor_is_rejected() -> None:
    with pytest.raises(ValueError, match="'factor'"):
        parse_rope_config({"rope_parameters": {"rope_type": "linear"}}, HEAD_DIM, MAX_POSITIONS)

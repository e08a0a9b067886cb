"""Checkpoint reading: architecture registry, spec fields, sharded files, strict weight matching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen3Config

from engine.models import ARCHITECTURES, load_model
from engine.models.loader import checkpoint_files
from engine.models.spec import MoESpec, mixtral_moe_spec, qwen3_moe_spec, sliding_windows
from tests.engine_models.tiny_checkpoints import SMALL, TinyCheckpoint, randomize


def save_tiny(config: PretrainedConfig, path: Path) -> Path:
    model = AutoModelForCausalLM.from_config(config)
    randomize(model, seed=0)
    model.save_pretrained(path)
    return path


def test_unknown_architecture_names_it_and_the_supported_list(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_layer": 2}))
    with pytest.raises(
        ValueError, match=r"'GPT2LMHeadModel'.*LlamaForCausalLM.*Qwen2ForCausalLM.*Qwen3ForCausalLM"
    ):
        load_model(tmp_path, torch.float32, torch.device("cpu"))


def test_registry_lists_the_supported_families() -> None:
    assert set(ARCHITECTURES) == {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "LlamaForSequenceClassification",
        "MistralForSequenceClassification",
        "Qwen2ForSequenceClassification",
        "Qwen3ForSequenceClassification",
    }


def test_spec_reads_config_and_generation_config(tmp_path: Path) -> None:
    path = save_tiny(Qwen3Config(**SMALL, head_dim=16, tie_word_embeddings=True), tmp_path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    model = load_model(path, torch.bfloat16, torch.device("cpu"))
    spec = model.spec
    assert (spec.architecture, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (
        "Qwen3ForCausalLM",
        2,
        4,
        2,
        16,
    )
    assert (spec.hidden_size, spec.vocab_size, spec.max_position_embeddings) == (64, 256, 128)
    assert spec.eos_token_ids == (2, 7)
    assert spec.flags.qk_norm and spec.flags.tie_embeddings and not spec.flags.qkv_bias
    assert spec.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head is None
    assert model.model.rotary.cos_sin_cache.dtype == torch.float32


def test_llama_flags_follow_config_not_each_other(tmp_path: Path) -> None:
    path = save_tiny(LlamaConfig(**SMALL, attention_bias=False, mlp_bias=True), tmp_path)
    flags = load_model(path, torch.float32, torch.device("cpu")).spec.flags
    assert (flags.qk_norm, flags.qkv_bias, flags.o_proj_bias, flags.mlp_bias, flags.tie_embeddings) == (
        False,
        False,
        False,
        True,
        False,
    )


def test_sharded_checkpoints_read_every_shard(tiny_checkpoint: TinyCheckpoint) -> None:
    files = checkpoint_files(tiny_checkpoint.path)
    if tiny_checkpoint.sharded:
        assert (tiny_checkpoint.path / "model.safetensors.index.json").exists()
        assert len(files) > 1 and all(f.exists() for f in files)
    else:
        assert [f.name for f in files] == ["model.safetensors"]


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    return save_tiny(LlamaConfig(**SMALL), tmp_path / "llama")


def rewrite_weights(src: Path, dst: Path, edit: dict[str, torch.Tensor | None]) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    for name, tensor in edit.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_missing_tensor_is_an_error(llama_dir: Path, tmp_path: Path) -> None:
    path = rewrite_weights(llama_dir, tmp_path / "m", {"model.layers.1.self_attn.k_proj.weight": None})
    with pytest.raises(
        ValueError, match=r"lacks tensors for: \['model.layers.1.self_attn.qkv_proj.weight'\]"
    ):
        load_model(path, torch.float32, torch.device("cpu"))


def test_unexpected_tensor_is_an_error(llama_dir: Path, tmp_path: Path) -> None:
    path = rewrite_weights(
        llama_dir, tmp_path / "u", {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}
    )
    with pytest.raises(ValueError, match=r"does not have: \['model.layers.0.self_attn.q_proj.bias'\]"):
        load_model(path, torch.float32, torch.device("cpu"))


def test_shape_mismatch_names_the_tensor(llama_dir: Path, tmp_path: Path) -> None:
    path = rewrite_weights(llama_dir, tmp_path / "s", {"model.norm.weight": torch.ones(32)})
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(32,\), expected \(64,\)"):
        load_model(path, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize(
    ("config", "always_sliding", "expected"),
    [
        # Qwen: a window in config.json does nothing unless use_sliding_window is set.
        ({"sliding_window": 4, "use_sliding_window": False}, False, (None, None, None)),
        ({"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 1}, False, (None, 4, 4)),
        (
            {
                "sliding_window": 8,
                "use_sliding_window": True,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            },
            False,
            (8, None, 8),
        ),
        # Mistral: the window applies to every layer whenever it is set.
        ({"sliding_window": 16}, True, (16, 16, 16)),
        ({"sliding_window": None}, True, (None, None, None)),
    ],
)
def test_sliding_windows_per_layer(config: dict, always_sliding: bool, expected: tuple) -> None:
    assert sliding_windows(config, 3, always_sliding) == expected


def test_moe_specs_read_qwen3_moe_and_mixtral_configs() -> None:
    # Checkpoints say num_experts; transformers 5 writes num_local_experts.
    base = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
    every_other = qwen3_moe_spec({**base, "num_experts": 8, "decoder_sparse_step": 2, "norm_topk_prob": True}, 4)
    assert every_other == MoESpec(8, 2, 32, True, (False, True, False, True))
    listed_dense = qwen3_moe_spec({**base, "num_local_experts": 4, "mlp_only_layers": [0, 2]}, 3)
    assert listed_dense == MoESpec(4, 2, 32, False, (False, True, False))
    with pytest.raises(ValueError, match=r"num_experts_per_tok 9 must be in \[1, 8\]"):
        qwen3_moe_spec({**base, "num_experts": 8, "num_experts_per_tok": 9}, 2)
    with pytest.raises(ValueError, match="lacks 'moe_intermediate_size'"):
        qwen3_moe_spec({"num_experts": 8, "num_experts_per_tok": 2}, 2)
    # Mixtral: every layer sparse, intermediate_size per expert, weights always renormalized.
    mixtral = {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 64}
    assert mixtral_moe_spec(mixtral, 2) == MoESpec(8, 2, 64, True, (True, True))

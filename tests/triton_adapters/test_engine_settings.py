"""The engine configuration the llm model builds from its rendered parameters."""

from __future__ import annotations

import pytest

from ensemble_configs.render import load_profile
from tests.servers import ROOT
from triton_adapters.engine_settings import engine_config

PROFILES = ROOT / "ensemble_configs" / "profiles"


def test_the_cpu_profile_builds_the_engine_it_describes() -> None:
    config = engine_config(load_profile(PROFILES / "cpu-default.yaml"), str(ROOT / "model_repository" / "llm"))
    # Relative checkpoint paths resolve against the folder holding the repository (the project).
    assert config.model == str(ROOT / "models" / "SmolLM2-135M-Instruct")
    assert (config.dtype, config.device, config.block_size) == ("float32", "cpu", 16)
    assert (config.max_model_len, config.max_num_seqs, config.max_num_batched_tokens) == (8192, 256, 2048)
    assert config.kv_cache_memory == 2 * 1024**3 and config.max_waiting_requests == 512
    assert config.enable_prefix_caching and config.tensor_parallel_size == 1
    assert not config.enforce_eager and config.cpu_weight_format == "auto"
    assert config.stream_interval == 1 and config.kv_cache_dtype == "auto" and not config.calculate_kv_scales
    assert config.speculative_config is None and config.lora_modules == {}
    assert not config.allow_runtime_lora_updating and config.max_loras == 8
    runtime = engine_config({"model": "/ckpt", "allow_runtime_lora_updating": "true", "max_loras": "2"}, "/repo/llm")
    assert runtime.allow_runtime_lora_updating and runtime.max_loras == 2


def test_gpu_instances_are_pinned_to_their_device() -> None:
    parameters = {"model": "/ckpt/qwen3", "device": "cuda", "tensor_parallel_size": "2", "max_waiting_requests": ""}
    assert engine_config(parameters, "/repo/llm", gpu_device_id=3).device == "cuda:3"
    unpinned = engine_config(parameters, "/repo/llm")
    assert unpinned.device == "cuda" and unpinned.tensor_parallel_size == 2
    assert unpinned.model == "/ckpt/qwen3" and unpinned.max_waiting_requests is None
    assert engine_config({**parameters, "enforce_eager": "true"}, "/repo/llm").enforce_eager
    forced = engine_config({**parameters, "cpu_weight_format": "plain"}, "/repo/llm")
    assert forced.cpu_weight_format == "plain"
    assert unpinned.stream_interval == 1
    assert engine_config({**parameters, "stream_interval": "4"}, "/repo/llm").stream_interval == 4
    assert engine_config({**parameters, "kv_cache_dtype": "bfloat16"}, "/repo/llm").kv_cache_dtype == "bfloat16"
    assert engine_config({**parameters, "kv_cache_dtype": "fp8"}, "/repo/llm").kv_cache_dtype == "fp8"
    assert not unpinned.calculate_kv_scales
    measured = engine_config({**parameters, "kv_cache_dtype": "fp8", "calculate_kv_scales": "true"}, "/repo/llm")
    assert measured.calculate_kv_scales


def test_speculative_decoding_takes_vllms_json() -> None:
    parameters = {"model": "/ckpt/qwen3", "device": "cpu"}
    assert engine_config(parameters, "/repo/llm").speculative_config is None
    assert engine_config({**parameters, "speculative_config": " "}, "/repo/llm").speculative_config is None
    text = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}'
    speculative = engine_config({**parameters, "speculative_config": text}, "/repo/llm").speculative_config
    assert speculative is not None
    assert (speculative.num_speculative_tokens, speculative.prompt_lookup_min, speculative.prompt_lookup_max) == (4, 3, 3)
    # A draft model's directory resolves as the checkpoint's.
    text = '{"model": "models/draft", "num_speculative_tokens": 4}'
    repository = str(ROOT / "model_repository" / "llm")
    speculative = engine_config({**parameters, "speculative_config": text}, repository).speculative_config
    assert speculative is not None
    assert (speculative.method, speculative.model) == ("draft_model", str(ROOT / "models" / "draft"))


def test_lora_modules_take_vllm_backends_multi_lora_json() -> None:
    """Adapter name -> directory; relative directories resolve as the checkpoint's (against the folder that
    holds the repository)."""
    parameters = {"model": "/ckpt/qwen3", "device": "cpu"}
    assert engine_config(parameters, "/repo/llm").lora_modules == {}
    assert engine_config({**parameters, "lora_modules": " "}, "/repo/llm").lora_modules == {}
    text = '{"sql": "/adapters/sql-lora", "chat": "adapters/chat"}'
    modules = engine_config({**parameters, "lora_modules": text}, str(ROOT / "model_repository" / "llm")).lora_modules
    assert modules == {"sql": "/adapters/sql-lora", "chat": str(ROOT / "adapters" / "chat")}
    assert list(modules) == ["sql", "chat"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sql=/adapters/sql", "not valid JSON"),
        ('["/adapters/sql"]', "must be a JSON object"),
        ('{"": "/adapters/sql"}', "adapter name is empty"),
        ('{"sql": ""}', "adapter 'sql' needs a directory"),
        ('{"sql": {"path": "/adapters/sql"}}', "adapter 'sql' needs a directory"),
    ],
)
def test_bad_lora_modules_are_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine_config({"model": "/ckpt/qwen3", "device": "cpu", "lora_modules": value}, "/repo/llm")

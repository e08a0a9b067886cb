"""The engine configuration the llm model builds from its rendered parameters."""

from __future__ import annotations

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
    assert config.speculative_config is None


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

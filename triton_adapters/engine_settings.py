"""The engine's configuration from the `llm` model's `parameters` (see ensemble_configs/templates/llm).

One function for the Triton model and for anything that must build the very engine a profile serves
(benchmarks compare against it in-process).
"""

from __future__ import annotations

import json

from engine import EngineConfig, SpeculativeConfig
from triton_adapters.model_parameters import optional_int, parse_bool, resolve_model_path


def engine_config(
    parameters: dict[str, str], model_repository: str, gpu_device_id: int | None = None
) -> EngineConfig:
    """`model_repository` is the model's own folder as Triton passes it (`<repo>/llm`); `gpu_device_id`
    is the device Triton pinned a KIND_GPU instance to, None for other kinds."""
    device = parameters.get("device", "auto")
    if device.startswith("cuda") and gpu_device_id is not None:
        # Triton pins a KIND_GPU instance to one device: data parallel instances never collide.
        device = f"cuda:{gpu_device_id}"
    kv_cache_memory = optional_int(parameters, "kv_cache_memory")
    config = EngineConfig(
        model=resolve_model_path(parameters["model"], model_repository),
        dtype=parameters.get("dtype", "auto"),
        device=device,
        block_size=int(parameters.get("block_size", "16")),
        kv_cache_dtype=parameters.get("kv_cache_dtype") or "auto",
        # Optional (not in the profiles): vLLM's --calculate-kv-scales, with an fp8 kv_cache_dtype.
        calculate_kv_scales=parse_bool(parameters.get("calculate_kv_scales", "false")),
        max_model_len=optional_int(parameters, "max_model_len"),
        max_num_seqs=int(parameters.get("max_num_seqs", "256")),
        max_num_batched_tokens=int(parameters.get("max_num_batched_tokens", "2048")),
        enable_prefix_caching=parse_bool(parameters.get("enable_prefix_caching", "true")),
        gpu_memory_utilization=float(parameters.get("gpu_memory_utilization", "0.9")),
        # Ranks 1.. are worker processes on the devices after `device` (a KIND_MODEL instance owns them).
        tensor_parallel_size=optional_int(parameters, "tensor_parallel_size") or 1,
        # Optional (not in the profiles): vLLM's --enforce-eager, no CUDA graphs for decode steps.
        enforce_eager=parse_bool(parameters.get("enforce_eager", "false")),
        # Optional (not in the profiles): force a float32 CPU weight format instead of timing them at load.
        cpu_weight_format=parameters.get("cpu_weight_format", "auto"),
        stream_interval=int(parameters.get("stream_interval") or "1"),
        lora_modules=lora_modules(parameters.get("lora_modules", ""), model_repository),
        allow_runtime_lora_updating=parse_bool(parameters.get("allow_runtime_lora_updating", "false")),
        max_loras=int(parameters.get("max_loras") or "8"),
    )
    if kv_cache_memory:
        config.kv_cache_memory = kv_cache_memory
    config.max_waiting_requests = optional_int(parameters, "max_waiting_requests")
    # vLLM's --speculative-config JSON, e.g. {"method": "ngram", "num_speculative_tokens": 4,
    # "prompt_lookup_max": 4} or {"model": "/models/Qwen3-0.6B", "num_speculative_tokens": 4} (a draft
    # model, its relative path resolved as the checkpoint's); empty (every shipped profile) or absent: off.
    speculative = parameters.get("speculative_config", "").strip()
    if speculative:
        config.speculative_config = SpeculativeConfig.from_json(speculative)
        if config.speculative_config.model is not None:
            config.speculative_config.model = resolve_model_path(config.speculative_config.model, model_repository)
    return config


def lora_modules(value: str, model_repository: str) -> dict[str, str]:
    """The `lora_modules` parameter, vllm_backend's multi_lora.json as one JSON object ({"sql":
    "/adapters/sql-lora"}), as adapter name -> directory; relative directories resolve as the checkpoint's.
    Empty: no adapters."""
    if not value.strip():
        return {}
    try:
        modules = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"lora_modules is not valid JSON: {error}") from None
    if not isinstance(modules, dict):
        raise ValueError(f"lora_modules must be a JSON object of adapter name -> directory, got {value!r}")
    for name, path in modules.items():
        if not name.strip():
            raise ValueError("lora_modules: an adapter name is empty")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"lora_modules: adapter {name!r} needs a directory (a non-empty string): {path!r}")
    return {name: resolve_model_path(path, model_repository) for name, path in modules.items()}

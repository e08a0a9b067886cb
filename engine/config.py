"""The engine's one typed configuration object."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The names engine.kv_cache.CACHE_DTYPES maps to element types, and auto (the model's dtype).
KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")


@dataclass
class SpeculativeConfig:
    """vLLM's --speculative-config. method "ngram" (prompt lookup): the tokens that followed the latest
    earlier occurrence of a sequence's last n tokens are proposed as its next ones. method "draft_model":
    a smaller checkpoint of the same vocabulary (`model`) proposes them, greedily, one token after another
    (engine.draft_proposer). Either way one forward of the target verifies them all. EAGLE and MTP are not
    supported."""

    # Tokens proposed at most per sequence and step.
    num_speculative_tokens: int
    # ngram: the n-gram lengths tried, longest first; vLLM's defaults: both 5, or one given sets the other.
    prompt_lookup_min: int = 5
    prompt_lookup_max: int = 5
    # "ngram" or "draft_model".
    method: str = "ngram"
    # draft_model: the draft's Hugging Face checkpoint directory; it runs whole on tensor-parallel rank 0.
    model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "draft_model"):
            raise ValueError(
                f"speculative method {self.method!r} is not supported: only 'ngram' and 'draft_model' (EAGLE, "
                "EAGLE-3 and MTP are not)"
            )
        if (self.method == "draft_model") != (self.model is not None):
            raise ValueError(
                f"speculative method {self.method!r} "
                + ("needs the draft's checkpoint as 'model'" if self.model is None else "takes no 'model'")
            )
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {self.prompt_lookup_min} and "
                f"{self.prompt_lookup_max}"
            )

    @classmethod
    def from_json(cls, text: str) -> SpeculativeConfig:
        """vLLM's JSON form: {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, ...}, or
        {"model": "/path/to/draft", "num_speculative_tokens": 4} (method "draft_model", implied by `model`)."""
        try:
            fields: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"speculative_config is not valid JSON: {error}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {text!r}")
        lookup = {"prompt_lookup_min", "prompt_lookup_max"}
        integers = {"num_speculative_tokens", "draft_tensor_parallel_size", *lookup}
        known = {"method", "model", *integers}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"speculative_config keys not supported: {unknown} (known: {sorted(known)})")
        if "num_speculative_tokens" not in fields:
            raise ValueError("speculative_config needs num_speculative_tokens")
        for name in integers:
            if name in fields and (not isinstance(fields[name], int) or isinstance(fields[name], bool)):
                raise ValueError(f"speculative_config {name} must be an integer, got {fields[name]!r}")
        model = fields.get("model")
        if model is not None and not (isinstance(model, str) and model):
            raise ValueError(f"speculative_config model must be a checkpoint directory, got {model!r}")
        method = str(fields.get("method", "draft_model" if model is not None else "ngram"))
        if method == "draft_model" and lookup & set(fields):
            raise ValueError("speculative_config prompt_lookup_min / prompt_lookup_max apply to method 'ngram' only")
        draft_tp = fields.get("draft_tensor_parallel_size")
        if draft_tp is not None and (draft_tp != 1 or method != "draft_model"):
            raise ValueError(
                f"speculative_config draft_tensor_parallel_size {draft_tp} is not supported: a draft model runs "
                "whole on tensor-parallel rank 0 (1), and only method 'draft_model' has one"
            )
        given_min, given_max = fields.get("prompt_lookup_min"), fields.get("prompt_lookup_max")
        low: int = given_min if given_min is not None else (given_max if given_max is not None else 5)
        high: int = given_max if given_max is not None else low
        return cls(
            num_speculative_tokens=fields["num_speculative_tokens"],
            prompt_lookup_min=low,
            prompt_lookup_max=high,
            method=method,
            model=model,
        )


@dataclass
class EngineConfig:
    """Everything the engine needs to start; built once by its caller (Triton model, benchmark, test)."""

    # Hugging Face checkpoint directory (config.json + safetensors).
    model: str
    # Tokenizer directory; None uses `model`.
    tokenizer: str | None = None
    # auto|float32|bfloat16|float16; auto = float32 on CPU, the checkpoint's dtype on CUDA.
    dtype: str = "auto"
    # auto|cpu|cuda|cuda:N; auto picks cuda when available.
    device: str = "auto"
    # Tokens per KV cache block.
    block_size: int = 16
    # auto|bfloat16|fp8|fp8_e4m3|fp8_e5m2 (vLLM's --kv-cache-dtype): the KV cache's element type; auto =
    # the model's dtype. bfloat16 under a float32 model on the CPU halves the cache's memory and the bytes
    # attention streams, fp8 (e4m3; scaled by the checkpoint's k_scale / v_scale where it has them or by
    # measured ones with calculate_kv_scales, else unscaled and saturating) quarters them on the CPU and
    # halves a 16-bit model's on Ada/Hopper GPUs; computing stays in the model's dtype (engine.kv_cache).
    kv_cache_dtype: str = "auto"
    # fp8 KV caches: measure each layer's k_scale / v_scale on the first forward (the first batch of
    # prompts) instead of the checkpoint's or none (vLLM's --calculate-kv-scales).
    calculate_kv_scales: bool = False
    # Longest prompt + output a request may reach; None = the model's max_position_embeddings.
    max_model_len: int | None = None
    # Most requests in the running batch at once.
    max_num_seqs: int = 256
    # Token budget of one engine step (prefill chunks + decodes).
    max_num_batched_tokens: int = 2048
    # Share full prompt blocks between requests with identical prefixes.
    enable_prefix_caching: bool = True
    # CUDA: fraction of device memory for weights, activations and the KV pool.
    gpu_memory_utilization: float = 0.9
    # CPU: bytes for the KV pool (all tensor-parallel ranks together).
    kv_cache_memory: int = 1 << 30
    # Ranks the model is split across (vLLM's --tensor-parallel-size): rank 0 runs the engine, ranks
    # 1.. are worker processes; on CUDA rank r uses device (base device index + r), on CPU all use gloo.
    tensor_parallel_size: int = 1
    # Explicit KV pool size in blocks; overrides both memory settings (tests use it to force preemption).
    num_kv_blocks: int | None = None
    # CUDA: run every step eagerly instead of replaying captured CUDA graphs for decode steps (vLLM's
    # --enforce-eager); for debugging, or to save the seconds of capture at start.
    enforce_eager: bool = False
    # CPU float32 and bfloat16: the layout projections and the LM head multiply from. auto times the
    # candidates on this CPU at load (MKL's packed GEMM wins on some, oneDNN's reordered weights on others;
    # see engine.models.packed_gemm); plain keeps F.linear on the checkpoint's weights; mkl (float32 only),
    # onednn or onednn+decode (AVX-512 CPUs: oneDNN plus a C++ kernel for decode batches, at twice the
    # weight memory) force one.
    cpu_weight_format: str = "auto"
    # Tokens a streamed output gathers before AsyncEngine hands it on (vLLM's --stream-interval); a request's
    # own stream_interval may raise it. A sequence's first and last outputs never wait. 1 = every token.
    stream_interval: int = 1
    # Seed of the engine's generator for requests without their own seed.
    seed: int = 0
    # Most requests waiting behind the running batch; beyond it submit() refuses new ones
    # (EngineOverloadedError -> 429) instead of letting the queue and its memory grow without bound.
    # None = unbounded.
    max_waiting_requests: int | None = None
    # Speculative decoding (vLLM's --speculative-config); None: one token per sequence and step.
    speculative_config: SpeculativeConfig | None = None
    # LoRA adapters by name -> PEFT adapter directory (vLLM's --lora-modules, vllm_backend's
    # multi_lora.json), all loaded at start; a request names one (lora_name) or none.
    lora_modules: dict[str, str] = field(default_factory=dict)
    # Requests may bring adapters by name and directory (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING and
    # /v1/load_lora_adapter): loaded at their first request, kept for the next (engine.lora_slots).
    allow_runtime_lora_updating: bool = False
    # Most adapters loaded at once, lora_modules included (vLLM's --max-loras); runtime ones beyond it
    # evict the least recently used one no request is using.
    max_loras: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be {'|'.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.calculate_kv_scales and not self.kv_cache_dtype.startswith("fp8"):
            raise ValueError(f"calculate_kv_scales needs an fp8 kv_cache_dtype, got {self.kv_cache_dtype!r}")
        if self.cpu_weight_format not in ("auto", "plain", "mkl", "onednn", "onednn+decode"):
            raise ValueError(
                f"cpu_weight_format must be auto|plain|mkl|onednn|onednn+decode, got {self.cpu_weight_format!r}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto|cpu|cuda|cuda:N, got {self.device!r}")
        for name in (
            "block_size", "max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size", "stream_interval", "max_loras",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {self.max_waiting_requests}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.allow_runtime_lora_updating and self.max_loras <= len(self.lora_modules):
            raise ValueError(
                f"max_loras {self.max_loras} leaves no slot for adapters loaded at run time beside the "
                f"{len(self.lora_modules)} of lora_modules"
            )
        for name, path in self.lora_modules.items():
            if not (isinstance(name, str) and name and isinstance(path, str) and path):
                raise ValueError(f"lora_modules maps adapter names to directories, got {name!r}: {path!r}")

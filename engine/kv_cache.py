"""The paged KV cache tensor's layout, and the per-layer key and value caches the attention kernels read.

One tensor [num_layers, 2, num_blocks, num_kv_heads, block_size, head_dim] holds every layer's keys (index
0) and values (1). A (block, KV head) tile of block_size x head_dim elements is contiguous, so a sequence's
rows of one head are whole tiles. The kernels take each cache as [num_blocks, num_kv_heads, block_size,
head_dim] with any strides.

Where the CPU attends in float32 or bfloat16 (over any cache dtype) the key tiles are stored transposed ([head_dim, block_size]):
its attention then computes scores straight from the cache instead of copying every key first
(kernels.paged_attention_native, kernels.paged_decode_in_place). Elsewhere tiles are stored as they are read.
"""

from __future__ import annotations

import torch

from kernels import native_library

# EngineConfig.kv_cache_dtype's names (vLLM's --kv-cache-dtype) other than auto; fp8 is e4m3, as in vLLM.
CACHE_DTYPES = {
    "bfloat16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
# Triton converts fp8 in hardware from compute capability 8.9 (Ada, Hopper) on.
_CUDA_FP8_CAPABILITY = (8, 9)


def resolve_cache_dtype(kv_cache_dtype: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The cache's element type for EngineConfig.kv_cache_dtype under a model of `dtype` on `device`; a pair
    no attention path here reads is refused rather than quietly replaced. Read: the model's own dtype;
    bfloat16 under float32 on the CPU; fp8 on the CPU, and on CUDA GPUs of capability 8.9 or later.

    fp8 values are divided by a layer's k_scale / v_scale where it has them (Attention: the checkpoint's
    calibrated ones, or measured with calculate_kv_scales), else stored unscaled (vLLM's default k_scale =
    v_scale = 1.0); either way they saturate at the format's largest finite value (448 for e4m3, 57344 for
    e5m2)."""
    if kv_cache_dtype == "auto":
        return dtype
    cache_dtype = CACHE_DTYPES[kv_cache_dtype]
    if cache_dtype == dtype or (device.type == "cpu" and dtype == torch.float32):
        return cache_dtype
    if cache_dtype in native_library.FP8_DTYPES:
        if device.type == "cpu" or torch.cuda.get_device_capability(device) >= _CUDA_FP8_CAPABILITY:
            return cache_dtype
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype} on {device} needs compute capability "
            f"{'.'.join(map(str, _CUDA_FP8_CAPABILITY))} or later: use auto"
        )
    raise ValueError(
        f"kv_cache_dtype={kv_cache_dtype} under a {str(dtype).removeprefix('torch.')} model on {device.type} is not "
        "implemented: use auto, fp8, or bfloat16 with a float32 model on the CPU"
    )


def stores_keys_transposed(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in native_library.DTYPES


def layer_caches(layer_cache: torch.Tensor, keys_transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This layer's [2, num_blocks, Hkv, block_size, D] slice -> (key cache, value cache), both
    [num_blocks, Hkv, block_size, D]."""
    key_cache, value_cache = layer_cache[0], layer_cache[1]
    if keys_transposed:
        num_blocks, num_kv_heads, block_size, head_dim = key_cache.shape
        key_cache = key_cache.view(num_blocks, num_kv_heads, head_dim, block_size).transpose(2, 3)
    return key_cache, value_cache

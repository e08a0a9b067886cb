"""An oracle for kv_cache_dtype=fp8 written apart from the engine's kernels: transformers' cache storing K/V
as an fp8 cache holds them."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from kernels.cache_write_ref import to_cache_dtype


class FP8RoundedCache(DynamicCache):
    """HF's cache rounding K/V to an fp8 format (saturated, to nearest) and attending over those; with a
    layer's (k_scale, v_scale), K / k_scale and V / v_scale are rounded and scaled back, as a calibrated
    checkpoint's fp8 cache holds them."""

    def __init__(self, cache_dtype: torch.dtype, scales: list[tuple[float, float]] | None = None) -> None:
        super().__init__()
        self.cache_dtype = cache_dtype
        self.scales = scales

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        scales = self.scales[layer_idx] if self.scales is not None else (1.0, 1.0)
        rounded = [
            to_cache_dtype(x / scale, self.cache_dtype).to(x.dtype) * scale
            for x, scale in zip((key_states, value_states), scales, strict=True)
        ]
        return super().update(*rounded, layer_idx, *args, **kwargs)

"""Rotary position embedding settings read from a checkpoint config, and the cos/sin cache built from them.

Both config spellings are accepted: the transformers-5 ``rope_parameters`` dict, and the older top-level
``rope_theta`` (+ ``partial_rotary_factor``) with an optional ``rope_scaling`` dict. The cache is built once
at load time in float32; the attention layers only index it through ``kernels.ops.rotary_embedding``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# The rope types the supported model families ship with. "dynamic" (NTK) depends on the running sequence
# length, which a cache built once cannot express, so it is rejected rather than silently approximated.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DEFAULT_ROPE_THETA = 10_000.0


@dataclass(frozen=True)
class RopeConfig:
    """Everything needed to build the cos/sin cache; fields unused by ``rope_type`` stay None."""

    # One of SUPPORTED_ROPE_TYPES.
    rope_type: str
    # Base wavelength of the rotary frequencies.
    theta: float
    # Leading dimensions of each head that are rotated (head_dim * partial_rotary_factor); the rest pass through.
    rotary_dim: int
    # Number of positions the cache covers (rows of cos_sin_cache).
    max_position: int
    # linear / llama3 / yarn: context extension factor.
    factor: float | None = None
    # llama3 / yarn: context length the model was pretrained with.
    original_max_position: int | None = None
    # llama3: wavelength band edges, as fractions of original_max_position.
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # yarn: ramp boundaries (rotations), explicit attention factor or the mscale pair it is derived from.
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    # yarn: round the correction range outward to whole dimensions (transformers' default).
    truncate: bool = True


def parse_rope_config(config: dict[str, Any], head_dim: int, max_position_embeddings: int) -> RopeConfig:
    """Read the rope settings of a raw ``config.json`` dict in either spelling."""
    params: dict[str, Any] = dict(config.get("rope_scaling") or {})
    params.update(config.get("rope_parameters") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    theta = float(params.get("rope_theta", config.get("rope_theta", DEFAULT_ROPE_THETA)))
    partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    rotary_dim = int(head_dim * partial)
    original: int | None = None
    if rope_type in ("llama3", "yarn"):
        original = int(
            params.get("original_max_position_embeddings")
            or config.get("original_max_position_embeddings", max_position_embeddings)
        )
    factor = params.get("factor")
    if rope_type in ("linear", "llama3") and factor is None:
        raise ValueError(f"rope type {rope_type!r} needs a 'factor' in the rope parameters")
    if rope_type == "llama3" and ("low_freq_factor" not in params or "high_freq_factor" not in params):
        raise ValueError("rope type 'llama3' needs 'low_freq_factor' and 'high_freq_factor'")
    max_position = max_position_embeddings
    if rope_type == "yarn" and original is not None:
        if factor is None:
            factor = max_position_embeddings / original
        # A yarn checkpoint may keep the pretraining length as max_position_embeddings and rely on the
        # factor for the extended context, so the cache must reach the extended length too.
        max_position = max(max_position, int(original * factor))
    return RopeConfig(
        rope_type=rope_type,
        theta=theta,
        rotary_dim=rotary_dim,
        max_position=max_position,
        factor=None if factor is None else float(factor),
        original_max_position=original,
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _base_inv_freq(rope: RopeConfig) -> torch.Tensor:
    exponents = torch.arange(0, rope.rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rope.rotary_dim
    return 1.0 / (rope.theta**exponents)


def _llama3_inv_freq(rope: RopeConfig) -> torch.Tensor:
    assert rope.factor is not None and rope.original_max_position is not None
    assert rope.low_freq_factor is not None and rope.high_freq_factor is not None
    inv_freq = _base_inv_freq(rope)
    low_freq_wavelen = rope.original_max_position / rope.low_freq_factor
    high_freq_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are interpolated by the full factor, short ones kept, the band between blended.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(rope: RopeConfig) -> tuple[torch.Tensor, float]:
    assert rope.factor is not None and rope.original_max_position is not None
    dim, base, factor = rope.rotary_dim, rope.theta, rope.factor
    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    original = rope.original_max_position

    def correction_dim(num_rotations: float) -> float:
        # The dimension whose wavelength fits num_rotations times into the pretraining context.
        return dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast or 32), correction_dim(rope.beta_slow or 1)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (
        1.0 / pos_freqs
    ) * extrapolation_weight
    return inv_freq, float(attention_factor)


def rope_inv_freq(rope: RopeConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [rotary_dim / 2] (float32) and the factor that scales cos and sin."""
    if rope.rope_type == "default":
        return _base_inv_freq(rope), 1.0
    if rope.rope_type == "linear":
        assert rope.factor is not None
        return _base_inv_freq(rope) / rope.factor, 1.0
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(rope), 1.0
    return _yarn_inv_freq(rope)


def build_cos_sin_cache(rope: RopeConfig, device: torch.device) -> torch.Tensor:
    """The [max_position, rotary_dim] float32 table ``kernels.ops.rotary_embedding`` reads: cos | sin halves."""
    inv_freq, attention_factor = rope_inv_freq(rope)
    positions = torch.arange(rope.max_position, dtype=torch.int64).to(torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    # yarn's attention factor scales cos and sin alike, so it is folded into the table.
    cache = torch.cat((freqs.cos() * attention_factor, freqs.sin() * attention_factor), dim=-1)
    return cache.to(device)

"""Torch reference for rotary position embedding of queries and keys, neox (halves) or gptj (pairs) style."""

from __future__ import annotations

import torch


def rotary_embedding_ref(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq, D]
    key: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, rot_dim]: cos in the first rot_dim/2 columns, sin in the rest
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first rot_dim features of every head by its token's position; returns new (query, key)."""
    cos, sin = cos_sin_cache[positions].float().unsqueeze(1).chunk(2, dim=-1)  # [T, 1, rot_dim / 2] each
    return _rotate(query, cos, sin, is_neox), _rotate(key, cos, sin, is_neox)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    rot_dim = 2 * cos.shape[-1]
    rot = x[..., :rot_dim].float()
    if is_neox:
        # HF rotate_half: x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin).
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    if rot_dim == x.shape[-1]:  # every feature rotates (the usual case): no pass-through tail to join
        return rotated.to(x.dtype)
    return torch.cat((rotated.to(x.dtype), x[..., rot_dim:]), dim=-1)

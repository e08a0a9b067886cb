"""The prepacked float32 weight formats this torch build offers, as pytest parameters (unavailable ones skip)."""

from __future__ import annotations

import pytest
import torch

from engine.models import packed_gemm

PREPACKED_FORMATS = [
    pytest.param(
        name, marks=pytest.mark.skipif(name not in packed_gemm.available_formats(), reason="no library")
    )
    for name in packed_gemm.FORMATS
    if torch.float32 in packed_gemm.FORMAT_DTYPES[name]
]

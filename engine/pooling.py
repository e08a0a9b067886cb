"""Embeddings from a decoder-only model (vLLM's pooling runner): a request that only prefills its prompt and
answers with one vector pooled from the final hidden states (after the last norm), instead of tokens. On a
sequence classifier (*ForSequenceClassification) the same request answers with the classification head's
logits of the pooled vector: the last token's, as Hugging Face's classifiers pool a sequence.

Pooling types, as vLLM names them: LAST (the last prompt token's state: what causal embedding models such as
Qwen3-Embedding are trained for), MEAN (the average over the prompt), CLS (the first token's). A
checkpoint saved by sentence-transformers says its own in 1_Pooling/config.json; without one, LAST. The
vector is cut to `dimensions` (Matryoshka embeddings) and then L2-normalized unless asked not to be.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

POOLING_TYPES = ("LAST", "MEAN", "CLS")
# sentence-transformers' pooling flags (1_Pooling/config.json) for the types above.
_SENTENCE_TRANSFORMERS_MODES = {
    "pooling_mode_lasttoken": "LAST",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_cls_token": "CLS",
}


@dataclass(frozen=True)
class PoolingParams:
    """What an embedding request asks for (vLLM's PoolingParams, embed task)."""

    # LAST | MEAN | CLS; None: the checkpoint's own (default_pooling_type).
    pooling_type: str | None = None
    # L2-normalize the vector (after cutting it to `dimensions`); None: true. A classifier's logits are
    # never normalized (nor cut): it refuses both.
    normalize: bool | None = None
    # Keep the first this many values (Matryoshka); None: all of the hidden size.
    dimensions: int | None = None
    # Keep only the last k prompt tokens (-1: as many as max_model_len allows); None: all.
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.pooling_type is not None and self.pooling_type not in POOLING_TYPES:
            raise ValueError(f"pooling_type must be one of {', '.join(POOLING_TYPES)}, got {self.pooling_type!r}")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {self.dimensions}")
        if self.truncate_prompt_tokens is not None and not (
            self.truncate_prompt_tokens == -1 or self.truncate_prompt_tokens >= 1
        ):
            raise ValueError(f"truncate_prompt_tokens must be -1 or >= 1, got {self.truncate_prompt_tokens}")


def default_pooling_type(model_dir: str | Path) -> str:
    """The pooling a sentence-transformers checkpoint declares (its 1_Pooling/config.json), else LAST."""
    try:
        config = json.loads((Path(model_dir) / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "LAST"
    declared = [kind for flag, kind in _SENTENCE_TRANSFORMERS_MODES.items() if isinstance(config, dict) and config.get(flag)]
    return declared[0] if len(declared) == 1 else "LAST"


class PooledState:
    """One request's pooling across its prefill chunks: the running sum of its rows (MEAN) or its first
    row (CLS); LAST needs nothing until the chunk with the last token. A chunk starting at position 0
    (the first, or the first again after a preemption) starts it over."""

    def __init__(self, pooling_type: str) -> None:
        self.pooling_type = pooling_type
        self._kept: torch.Tensor | None = None

    def add_chunk(self, rows: torch.Tensor, first_position: int) -> None:
        """rows [n, hidden]: the final hidden states of positions first_position.. of the prompt."""
        if first_position == 0:
            self._kept = None
        if self.pooling_type == "MEAN":
            chunk_sum = rows.float().sum(0)
            self._kept = chunk_sum if self._kept is None else self._kept + chunk_sum
        elif self.pooling_type == "CLS" and first_position == 0:
            self._kept = rows[0].float()

    def finish(
        self,
        last_row: torch.Tensor,
        num_prompt_tokens: int,
        params: PoolingParams,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[float]:
        """The embedding once the last chunk was added; last_row [hidden] is the last token's state. With a
        classifier's `head` (pooled [hidden] -> float32 logits), the head's logits of the pooled vector."""
        if self.pooling_type == "LAST":
            vector = last_row.float()
        else:
            assert self._kept is not None, "a prompt's first chunk always comes before its last"
            vector = self._kept / num_prompt_tokens if self.pooling_type == "MEAN" else self._kept
        if head is not None:
            return head(vector).tolist()
        if params.dimensions is not None:
            vector = vector[: params.dimensions]
        if params.normalize is not False:
            vector = F.normalize(vector, dim=-1)
        return vector.tolist()

"""The step's token bitmask, handed from the engine to the runner and applied to the logits in one call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import xgrammar as xgr


@dataclass
class GrammarBitmask:
    """Allowed next tokens of the constrained rows of one step's logits."""

    # [num_sampled_rows, ceil(vocab_size / 32)] int32 on the CPU, bit j of row i = token j allowed for
    # logits row i. Only the rows listed in `rows` are filled; the others are stale and never read.
    bitmask: torch.Tensor
    # Logits rows (positions among the step's sampled rows) that carry a constraint.
    rows: list[int]
    # Logits columns covered (the model's vocabulary size).
    vocab_size: int

    def apply(self, logits: torch.Tensor) -> None:
        """Set the disallowed logits of the constrained rows to -inf, in place (CPU or CUDA)."""
        bitmask = self.bitmask
        if logits.device.type != "cpu":
            # Asynchronous from pinned memory: the step ends by reading the sampled tokens back, which
            # waits for this copy, before the next step refills the same host buffer.
            bitmask = bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size, indices=self.rows)

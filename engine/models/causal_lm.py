"""The decoder-only language model every supported family instantiates, configured by its ModelSpec."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention_metadata import AttentionMetadata
from engine.models.layers import DecoderLayer, RMSNorm, RotaryEmbedding, VocabEmbedding
from engine.models.linear import Linear
from engine.models.spec import ModelSpec


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm; named like Hugging Face's `model.` subtree so checkpoint
    names map onto parameters one to one (apart from the fused projections)."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(spec.vocab_size, spec.hidden_size, spec.dtype, device)
        self.rotary = RotaryEmbedding(spec, device)
        self.layers = nn.ModuleList(
            DecoderLayer(spec, i, self.rotary, device) for i in range(spec.num_layers)
        )
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, spec.dtype, device)


class CausalLM(nn.Module):
    """A causal LM over one varlen batch and a paged KV cache. Parameters are allocated uninitialised;
    `engine.models.load_model` fills them from the checkpoint."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        super().__init__()
        self.spec = spec
        self.model = DecoderModel(spec, device)
        # Tied checkpoints keep a single matrix: the embedding table serves as the LM head.
        self.lm_head = (
            None
            if spec.flags.tie_embeddings
            else Linear(spec.hidden_size, spec.vocab_size, False, spec.dtype, device)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions [T] int64 for the step's tokens; kv_cache
        [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim], written in place at
        attn.slot_mapping. Returns the final hidden states [T, hidden_size]."""
        hidden = self.model.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for i, layer in enumerate(self.model.layers):
            hidden, residual = layer(positions, hidden, residual, kv_cache[i], attn)
        assert residual is not None, "a model needs at least one layer"
        out, _ = self.model.norm.add_and_norm(hidden, residual)
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] (only the rows that need sampling) -> float32 logits [N, vocab_size]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

"""The decoder-only language model every supported family instantiates, configured by its ModelSpec: a causal
LM, or the same decoder under a sequence classifier's head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention_metadata import AttentionMetadata
from engine.distributed import TensorParallelGroup
from engine.kv_cache import layer_caches, stores_keys_transposed
from engine.models.layers import Attention, DecoderLayer, RMSNorm, RotaryEmbedding
from engine.models.linear import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from engine.models.lora import LoRABatch
from engine.models.sharding import head_shard
from engine.models.spec import ModelSpec


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm; named like Hugging Face's `model.` subtree so checkpoint
    names map onto parameters one to one (apart from the fused projections)."""

    def __init__(self, spec: ModelSpec, device: torch.device, group: TensorParallelGroup) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            spec.vocab_size, spec.hidden_size, spec.dtype, device, group
        )
        self.rotary = RotaryEmbedding(spec, device)
        self.layers = nn.ModuleList(
            DecoderLayer(spec, i, self.rotary, device, group) for i in range(spec.num_layers)
        )
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, spec.dtype, device)


class ClassifierHead(nn.Module):
    """A *ForSequenceClassification checkpoint's `score` [num_labels, hidden_size] (no bias, as in Hugging
    Face's Llama, Mistral, Qwen2 and Qwen3 classifiers). Whole on every rank: it is a few rows, and the hidden
    states it reads are the same on all of them."""

    def __init__(self, num_labels: int, hidden_size: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty((num_labels, hidden_size), dtype=dtype, device=device), False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [..., hidden_size] -> float32 logits [..., num_labels]. In float32 whatever the model's
        dtype, as vLLM runs pooling heads (its head_dtype): a bfloat16 product would round the scores."""
        return F.linear(pooled.float(), self.weight.float())


# LM head rows timed when a CPU weight format is chosen.
_HEAD_ROWS_TIMED = 8192


class CausalLM(nn.Module):
    """A causal LM over one varlen batch and a paged KV cache, or (spec.num_labels set) the same decoder with a
    classification head `score` in place of the LM head: such a model only pools (engine.pooling), never
    samples. Parameters are allocated uninitialised; `engine.models.load_model` fills them from the
    checkpoint.

    Under tensor parallelism (`group.size > 1`) this is one rank's shard: every rank runs `forward` on the
    same inputs (the collectives inside keep the hidden states identical on all ranks), and only rank 0
    receives logits."""

    def __init__(
        self, spec: ModelSpec, device: torch.device, group: TensorParallelGroup | None = None
    ) -> None:
        super().__init__()
        group = group or TensorParallelGroup.single()
        self.spec = spec
        # KV heads this rank keeps in its KV cache (all of them without tensor parallelism).
        self.num_kv_heads = head_shard(spec, group.rank, group.size).num_kv_heads
        self.keys_transposed = stores_keys_transposed(device, spec.dtype)
        self.model = DecoderModel(spec, device, group)
        # A classifier's head, None for a causal LM.
        self.score = (
            None if spec.num_labels is None else ClassifierHead(spec.num_labels, spec.hidden_size, spec.dtype, device)
        )
        # Tied checkpoints keep a single matrix: the embedding table serves as the LM head. A classifier has
        # none (its config may still say tie_word_embeddings, inherited from the causal LM it was made of).
        self.lm_head = (
            None
            if spec.flags.tie_embeddings or self.score is not None
            else VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, spec.dtype, device, group)
        )

    def attention_layers(self) -> list[Attention]:
        """Every decoder layer's attention, first layer first."""
        return [module for module in self.modules() if isinstance(module, Attention)]

    def timing_weights(self) -> list[torch.Tensor]:
        """Weights whose products stand for the whole model's when a CPU weight format is chosen (before
        packing): one decoder layer's projections (every layer has the same) and the LM head's first
        rows (the vocabulary size only scales its time)."""
        layer = self.model.layers[0]
        projections = [m for m in layer.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]
        weights = [p.weight.data for p in projections]
        if self.score is None:
            weights.append(self._lm_head().weight.data[:_HEAD_ROWS_TIMED])
        return weights

    def pack_weights(self, format_name: str) -> None:
        """Hand every projection and the LM head to the prepacked CPU format `format_name`
        (engine.models.packed_gemm), once the checkpoint is loaded. A classifier's head stays as it is:
        it multiplies one row per request."""
        for module in self.modules():
            if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
                module.pack(format_name)
        if self.score is not None:
            return
        if self.lm_head is None:  # tied: the table still serves the embedding lookups
            self.model.embed_tokens.pack(format_name, keep_weight=True)
        else:
            self.lm_head.pack(format_name)

    def _lm_head(self) -> VocabParallelEmbedding:
        assert self.score is None, f"{self.spec.architecture} is a classifier: it has no LM head"
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        attn: AttentionMetadata,
        lora_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, positions [T] int64 for the step's tokens; kv_cache
        [num_layers, 2, num_blocks, self.num_kv_heads, block_size, head_dim] (engine.kv_cache), written in
        place at attn.slot_mapping; lora_slots [T] int64, each token's LoRA adapter slot (0: none;
        engine.models.lora), None when no token has one. Returns the final hidden states [T, hidden_size]."""
        lora = LoRABatch.from_slots(lora_slots, self.spec.dtype) if lora_slots is not None else None
        hidden = self.model.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for i, layer in enumerate(self.model.layers):
            key_cache, value_cache = layer_caches(kv_cache[i], self.keys_transposed)
            hidden, residual = layer(positions, hidden, residual, key_cache, value_cache, attn, lora)
        assert residual is not None, "a model needs at least one layer"
        out, _ = self.model.norm.add_and_norm(hidden, residual)
        return out

    def gather_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [N, hidden_size] -> float32 logits [N, vocab_size] on rank 0; None on other ranks,
        which only contribute their vocabulary slice."""
        return self._lm_head().logits(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] (only the rows that need sampling) -> float32 logits [N, vocab_size].
        Rank 0 only."""
        logits = self.gather_logits(hidden)
        assert logits is not None, "only tensor-parallel rank 0 receives logits"
        return logits

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """A classifier's float32 logits [..., num_labels] of pooled final hidden states [..., hidden_size]
        (engine.pooling). Needs no other rank: the head is whole on each."""
        assert self.score is not None, f"{self.spec.architecture} has no classification head"
        return self.score(pooled)

"""The draft model of draft-model speculative decoding (engine.draft_proposer runs it): a smaller checkpoint
of the target's vocabulary, loaded as the target is (same loader and registry, dtype, device, CPU weight
format, KV cache dtype), and a paged KV cache of its own.

It runs whole on tensor-parallel rank 0, the engine's process (vLLM's draft_tensor_parallel_size 1): its
forwards are local calls the workers never see, so the target's sharding is untouched.

Its cache has as many blocks as the target's: it holds the same requests' tokens (recomputed rather than
shared across requests: the draft has no prefix cache), plus one step's drafts. Both pools come out of the
one budget (kv_cache_memory on the CPU, gpu_memory_utilization on CUDA, where the draft's weights load
before the target's pool is measured), split so that each holds that many blocks: a draft costs the target
blocks in proportion to its KV bytes per token. The draft's forwards run eagerly (no CUDA graphs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from engine.attention_metadata import varlen_batch
from engine.config import EngineConfig
from engine.distributed import TensorParallelGroup
from engine.kv_cache import resolve_cache_dtype
from engine.model_shard import allocate_kv_cache, kv_bytes_per_block, load_weights, measure_kv_scales
from engine.models import CausalLM, read_spec

# Files whose presence says a checkpoint directory carries its own tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def draft_dir(config: EngineConfig) -> str | None:
    """The draft model's checkpoint directory; None without draft-model speculation."""
    speculative = config.speculative_config
    return speculative.model if speculative is not None else None


def check_draft_model(config: EngineConfig, dtype: torch.dtype) -> None:
    """Refuse a draft that cannot propose the target's tokens: another tokenizer (compared where the draft's
    directory has one), vocabularies that differ beyond padding (the rows past the tokenizer's tokens some
    checkpoints add), no LM head, or fewer positions than max_model_len. Reads config files only."""
    path = draft_dir(config)
    assert path is not None, "no draft model configured"
    target, draft = read_spec(config.model, dtype), read_spec(path, dtype)
    if draft.num_labels is not None:
        raise ValueError(f"the draft model {path} is a sequence classifier ({draft.architecture}): it has no LM head")
    max_model_len = config.max_model_len or target.max_position_embeddings
    if draft.max_position_embeddings < max_model_len:
        raise ValueError(
            f"the draft model's max_position_embeddings {draft.max_position_embeddings} is below max_model_len "
            f"{max_model_len}: it cannot draft that far"
        )
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
    if draft.vocab_size != target.vocab_size and min(draft.vocab_size, target.vocab_size) < len(tokenizer):
        raise ValueError(
            f"the draft model's vocabulary ({draft.vocab_size} rows) and the target's ({target.vocab_size}) differ "
            f"beyond padding: the tokenizer has {len(tokenizer)} tokens, and both must have a row for each"
        )
    if any((Path(path) / name).exists() for name in _TOKENIZER_FILES):
        if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"the draft model's tokenizer ({path}) maps tokens to other ids than the target's: a draft must "
                "share the target's tokenizer"
            )


def load_draft_weights(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> CausalLM:
    """The whole draft model (no adapters: requests with one draft with the base draft, and their targets
    verify with theirs)."""
    path = draft_dir(config)
    assert path is not None, "no draft model configured"
    model = load_weights(path, config, device, dtype, TensorParallelGroup.single(), {})
    if config.calculate_kv_scales:
        measure_kv_scales(model)
    return model


def draft_cache_bytes_per_block(model: CausalLM, config: EngineConfig, device: torch.device) -> int:
    """KV bytes of one block of the draft's cache (in the target's cache dtype)."""
    cache_dtype = resolve_cache_dtype(config.kv_cache_dtype, model.spec.dtype, device)
    return kv_bytes_per_block(model, cache_dtype, config.block_size)


class DraftModel:
    """The loaded draft and its KV cache; runs one varlen forward at a time and ranks the next token."""

    def __init__(
        self, model: CausalLM, num_blocks: int, config: EngineConfig, device: torch.device, target_vocab_size: int
    ) -> None:
        self.model = model
        self.device = device
        self.num_blocks = num_blocks
        self.block_size = config.block_size
        # Token ids the draft can read (its embedding rows).
        self.vocab_size = model.spec.vocab_size
        # Token ids it may propose: those the target has too (the rest are one side's padding).
        self._proposable = min(self.vocab_size, target_vocab_size)
        cache_dtype = resolve_cache_dtype(config.kv_cache_dtype, model.spec.dtype, device)
        self.kv_cache = allocate_kv_cache(model, num_blocks, self.block_size, cache_dtype, device)

    @torch.inference_mode()
    def greedy(
        self, input_ids: torch.Tensor, starts: list[int], lengths: list[int], block_tables: list[list[int]]
    ) -> torch.Tensor:
        """Write the K/V of sequence i's `lengths[i]` tokens from position `starts[i]` on (`input_ids`: all
        sequences' tokens one after the other, on the device) into blocks `block_tables[i]`, and return the
        token the draft ranks first after each sequence's last one [S] (on the device: a caller feeding them
        back never waits for them)."""
        positions, attn = varlen_batch(starts, lengths, block_tables, self.block_size, self.device)
        hidden = self.model.forward(input_ids, positions, self.kv_cache, attn)
        last_rows = attn.query_start_loc[1:].to(torch.int64) - 1
        logits = self.model.compute_logits(hidden[last_rows])
        return logits[:, : self._proposable].argmax(dim=-1)

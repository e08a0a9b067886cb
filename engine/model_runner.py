"""Runs one scheduled step on the model: flatten -> forward -> logits of the sampled rows -> sample.

The runner owns the device, the model and the KV cache tensor
[num_layers, 2, num_blocks, num_kv_heads, block_size, head_dim]; the block manager only hands out
indices into it. With tensor_parallel_size > 1 it holds rank 0's shard of both and drives the worker
processes that hold the others (engine.tp_workers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.attention_metadata import AttentionMetadata, to_device, varlen_batch
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeCudaGraphs
from engine.distributed import TensorParallelGroup
from engine.draft_model import (
    DraftModel,
    check_draft_model,
    draft_cache_bytes_per_block,
    draft_dir,
    load_draft_weights,
)
from engine.lora import load_adapter
from engine.lora_slots import AdapterSlots
from engine.model_shard import ModelShard
from engine.models import CausalLM
from engine.models.lora import attach_adapter, detach_adapter
from engine.outputs import TokenLogprobs
from engine.prompt_logprobs import PromptLogprobsChunk, compute_prompt_logprobs
from engine.request import Request
from engine.sampler import Sampler, SamplingBatch
from engine.sampling_batch import build_sampling_batch, token_logprobs
from engine.scheduler import ScheduledChunk, SchedulerOutput
from engine.structured_output.bitmask import GrammarBitmask
from engine.tp_workers import RankZeroModel, TensorParallelWorkers

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunnerOutput:
    """What one step produced."""

    # Per chunk whose `sample` is True, in chunk order: the sampled token, or for a chunk with k draft
    # tokens the token sampled at each of its last k + 1 rows (engine.speculative verifies them).
    sampled_token_ids: list[list[int]]
    # Aligned with sampled_token_ids, token for token: raw logprobs for requests that want them, else None.
    logprobs: list[list[TokenLogprobs | None]]
    # Prompt logprobs of this step's prefill chunks, for requests that asked.
    prompt_logprobs: list[PromptLogprobsChunk]
    # Each chunk of an embedding request with its rows' final hidden states [num_tokens, hidden_size]
    # (engine.pooling): the engine pools them.
    pooling_rows: list[tuple[ScheduledChunk, torch.Tensor]] = field(default_factory=list)


def _pooling_rows(chunks: list[ScheduledChunk], hidden: torch.Tensor) -> list[tuple[ScheduledChunk, torch.Tensor]]:
    """The hidden rows of every embedding request's chunk (chunks lie in `hidden` one after the other)."""
    rows, start = [], 0
    for chunk in chunks:
        if chunk.request.pooling is not None:
            rows.append((chunk, hidden[start : start + chunk.num_tokens]))
        start += chunk.num_tokens
    return rows


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model_dir: Path) -> torch.dtype:
    """auto: float32 on CPU (no fast half kernels there), the checkpoint's own dtype on CUDA."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    with open(model_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    return _DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), torch.bfloat16)


class ModelRunner:
    """Owns the model, the KV cache and the sampler (and a draft model's, which engine.draft_proposer runs);
    stateless between steps apart from the cache."""

    def __init__(self, config: EngineConfig) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device, Path(config.model))
        self.block_size = config.block_size
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        drafting = draft_dir(config) is not None
        if drafting:
            check_draft_model(config, self.dtype)  # before any process starts or any weight loads
        # Tensor parallel: the workers start first so that all ranks load their shards at once.
        self.workers: TensorParallelWorkers | None = None
        if config.tensor_parallel_size > 1:
            self.workers = TensorParallelWorkers(config, self.device, self.dtype)
        group = self.workers.group if self.workers else TensorParallelGroup.single()
        try:
            # The draft's weights load first: on CUDA the target's KV pool is measured around them.
            draft = load_draft_weights(config, self.device, self.dtype) if drafting else None
            draft_bytes = draft_cache_bytes_per_block(draft, config, self.device) if draft is not None else 0
            shard = ModelShard(config, self.device, self.dtype, group, draft_bytes)
            # Draft-model speculation's draft, on this rank alone, with as many KV blocks (engine.draft_model).
            self.draft: DraftModel | None = None
            if draft is not None:
                self.draft = DraftModel(draft, shard.num_blocks, config, self.device, shard.spec.vocab_size)
        except BaseException:
            self.shutdown()
            raise
        # Rank 0's model calls go through RankZeroModel, which mirrors each of them on the workers.
        self.model: CausalLM | RankZeroModel = (
            shard.model if self.workers is None else RankZeroModel(shard.model, self.workers)
        )
        self.spec = shard.spec
        self.max_model_len = config.max_model_len or self.spec.max_position_embeddings
        if self.max_model_len > self.spec.max_position_embeddings:
            self.shutdown()
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                f"{self.spec.max_position_embeddings}"
            )
        self.sampler = Sampler(config.seed, self.device)
        # Which adapter is in which slot (ModelShard attached lora_modules in their order; 0 is the base).
        self.adapters = AdapterSlots(config.lora_modules, config.max_loras, config.allow_runtime_lora_updating)
        self._local_model = shard.model
        self.num_blocks = shard.num_blocks
        self.kv_cache = shard.kv_cache
        # Decode steps replay CUDA graphs (one rank only: the tensor-parallel workers run eagerly).
        self.decode_graphs: DecodeCudaGraphs | None = None
        self._measuring_kv_scales = config.calculate_kv_scales
        # A mixture of experts reads its per-expert row counts on the host: no graph can replay that.
        # A classifier never decodes: no graph would ever replay.
        if (
            self.device.type == "cuda"
            and self.workers is None
            and not config.enforce_eager
            and self.spec.moe is None
            and self.spec.num_labels is None
        ):
            self.decode_graphs = DecodeCudaGraphs(
                shard.model, self.kv_cache, config.max_num_seqs, self.max_model_len, self.block_size
            )

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any."""
        if self.workers is not None:
            self.workers.shutdown()

    @torch.inference_mode()
    def run(
        self,
        out: SchedulerOutput,
        fill_grammar: Callable[[list[Request]], GrammarBitmask | None] | None = None,
    ) -> RunnerOutput:
        """`fill_grammar` builds the structured-output mask of the sampler's rows (row i: request i of the
        list it is given), applied to their logits before sampling. It is called once the forward is
        launched: on CUDA the CPU fills the mask while the GPU computes, instead of the GPU waiting for it."""
        input_ids, positions, attn, sample_rows = self._prepare_inputs(out.chunks)
        lora_slots = self._lora_slots(out.chunks)
        # The graphs are captured without adapters: steps with any run eagerly.
        graphs = self.decode_graphs if not self._measuring_kv_scales and lora_slots is None else None
        if graphs is not None and graphs.can_run(len(out.chunks), attn):
            hidden = graphs.run(input_ids, positions, attn)
        else:
            hidden = self.model.forward(input_ids, positions, self.kv_cache, attn, lora_slots)
            # calculate_kv_scales measures in the first forward, which runs eagerly (graphs never measure),
            # even when it is a step of one-token prompts a graph could replay.
            self._measuring_kv_scales = False
        prompt_logprobs = compute_prompt_logprobs(out.chunks, hidden, self.model.compute_logits)
        pooling_rows = _pooling_rows(out.chunks, hidden)
        if not any(chunk.sample for chunk in out.chunks):
            return RunnerOutput(
                sampled_token_ids=[], logprobs=[], prompt_logprobs=prompt_logprobs, pooling_rows=pooling_rows
            )
        logits = self.model.compute_logits(hidden[sample_rows])
        # One sampler row per sampled position: a chunk with k drafts samples each of its last k + 1 rows
        # with its request's settings (engine.speculative).
        rows = [chunk.request for chunk in out.chunks if chunk.sample for _ in range(1 + len(chunk.draft_token_ids))]
        batch = self._sampling_batch(rows)
        grammar = fill_grammar(rows) if fill_grammar is not None else None
        if grammar is not None:
            grammar.apply(logits)
        result = self.sampler(logits, batch)
        tokens = result.token_ids.tolist()
        logprobs = token_logprobs(rows, batch, result)
        sampled_token_ids: list[list[int]] = []
        chunk_logprobs: list[list[TokenLogprobs | None]] = []
        row = 0
        for chunk in out.chunks:
            if chunk.sample:
                count = 1 + len(chunk.draft_token_ids)
                sampled_token_ids.append(tokens[row : row + count])
                chunk_logprobs.append(logprobs[row : row + count])
                row += count
        return RunnerOutput(
            sampled_token_ids=sampled_token_ids,
            logprobs=chunk_logprobs,
            prompt_logprobs=prompt_logprobs,
            pooling_rows=pooling_rows,
        )

    @torch.inference_mode()
    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """A sequence classifier's float32 logits of a pooled final hidden state [hidden_size]: rank 0's own
        head (every rank holds it whole)."""
        return self._local_model.classify(pooled)

    def _prepare_inputs(
        self, chunks: list[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """One varlen batch: input ids, positions, metadata, and the rows to sample: each sampled chunk's
        last known token and its draft tokens."""
        token_ids: list[int] = []
        starts, lengths, tables = [], [], []
        sample_row_ids: list[int] = []
        for chunk in chunks:
            begin = chunk.num_computed_before
            num_known = chunk.num_tokens - len(chunk.draft_token_ids)
            token_ids.extend(chunk.request.all_token_ids[begin : begin + num_known])
            token_ids.extend(chunk.draft_token_ids)
            if chunk.sample:
                # The last known token's row, then one per draft token.
                sample_row_ids.extend(range(len(token_ids) - 1 - len(chunk.draft_token_ids), len(token_ids)))
            starts.append(begin)
            lengths.append(chunk.num_tokens)
            tables.append(chunk.request.block_ids)
        positions, attn = varlen_batch(starts, lengths, tables, self.block_size, self.device)
        input_tensor = self._to_device(torch.tensor(token_ids, dtype=torch.int64))
        sample_rows = self._to_device(torch.tensor(sample_row_ids, dtype=torch.int64))
        return input_tensor, positions, attn, sample_rows

    def load_lora(self, name: str, path: str, slot: int) -> None:
        """Read the adapter at `path` and put it in `slot` on every rank (ValueError: it does not fit)."""
        adapter = load_adapter(name, path)
        attach_adapter(self._local_model, adapter, slot)
        if self.workers is not None:
            self.workers.attach_lora(name, path, slot)

    def unload_lora(self, slot: int) -> None:
        detach_adapter(self._local_model, slot)
        if self.workers is not None:
            self.workers.detach_lora(slot)

    def _lora_slots(self, chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """Each token's adapter slot [T] (0: none), None when no chunk's request has an adapter."""
        if not self.adapters.adapters:  # no adapters loaded: nothing to look up in every step
            return None
        slots = [self.adapters.slot_of(chunk.request.lora_name) if chunk.request.lora_name else 0 for chunk in chunks]
        if not any(slots):
            return None
        lengths = [chunk.num_tokens for chunk in chunks]
        per_token = torch.repeat_interleave(torch.tensor(slots), torch.tensor(lengths))
        return self._to_device(per_token)

    def _sampling_batch(self, requests: list[Request]) -> SamplingBatch:
        return build_sampling_batch(requests, self.spec.vocab_size, self._to_device)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return to_device(tensor, self.device)

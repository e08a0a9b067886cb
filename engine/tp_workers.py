"""Tensor-parallel worker processes, driven by rank 0.

Rank 0 is the engine (scheduler, block manager, sampler) and holds shard 0 of the model. Ranks 1..tp-1 are
processes spawned here, each owning its model shard and KV cache shard. Every model call on rank 0 is
mirrored on the workers: rank 0 sends a small fixed-size header down each worker's pipe, then broadcasts
the call's inputs in one tensor through the process group (the packed step for a forward, the hidden rows
for a logits call); then all ranks run the same layers, whose collectives line up. Workers return nothing:
rank 0 alone receives the gathered logits.

Idle workers wait on their pipe, not in a collective, so an idle engine never hits the collective timeout,
and a worker whose rank 0 died reads end-of-file and exits. A worker that fails reports its traceback on
the pipe and exits; rank 0's next collective fails and names it (see engine.distributed).
"""

from __future__ import annotations

import logging
import struct
import time
import traceback
import weakref
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import torch
import torch.multiprocessing
from torch.distributed import TCPStore

from engine.attention_metadata import AttentionMetadata
from engine.config import EngineConfig
from engine.distributed import TensorParallelError, TensorParallelGroup
from engine.lora import load_adapter
from engine.model_shard import ModelShard
from engine.models import CausalLM, read_spec
from engine.models.lora import attach_adapter, detach_adapter
from engine.models.sharding import check_tensor_parallel

logger = logging.getLogger(__name__)

# Header: kind, then up to six sizes. FORWARD: tokens, sequences, block-table width, max query length,
# max sequence length, whether LoRA slots follow (1) or not (0). LOGITS: rows.
_HEADER = struct.Struct("<7q")
_STOP, _FORWARD, _LOGITS, _ATTACH_LORA, _DETACH_LORA = 0, 1, 2, 3, 4
# How long shutdown waits for a worker to exit on its own before killing it.
_JOIN_SECONDS = 10.0


def rank_device(base: torch.device, rank: int) -> torch.device:
    """Rank r's device: the CPU for every rank, or CUDA device (base index + r)."""
    if base.type != "cuda":
        return base
    return torch.device("cuda", (base.index or 0) + rank)


def pack_step(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    attn: AttentionMetadata,
    lora_slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """The forward's inputs as one int64 tensor on their device (see unpack_step for the layout)."""
    parts = [
        input_ids,
        positions,
        attn.slot_mapping,
        attn.query_start_loc.to(torch.int64),
        attn.seq_lens.to(torch.int64),
        attn.block_tables.to(torch.int64).flatten(),
    ]
    return torch.cat(parts if lora_slots is None else [*parts, lora_slots])


def packed_step_size(num_tokens: int, num_seqs: int, width: int, has_lora: bool) -> int:
    return (3 + has_lora) * num_tokens + 2 * num_seqs + 1 + num_seqs * width


def unpack_step(
    packed: torch.Tensor, num_seqs: int, width: int, max_query_len: int, max_seq_len: int, has_lora: bool
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor | None]:
    """Inverse of pack_step: [ids T | positions T | slots T | query_start_loc S+1 | seq_lens S | tables S*W],
    then the LoRA slots [T] when has_lora."""
    num_tokens = (packed.numel() - (num_seqs + 1) - num_seqs * (1 + width)) // (3 + has_lora)
    ids, positions, slots, starts, lens, tables, lora_slots = packed.split(
        (num_tokens, num_tokens, num_tokens, num_seqs + 1, num_seqs, num_seqs * width, num_tokens * has_lora)
    )
    attn = AttentionMetadata(
        query_start_loc=starts.to(torch.int32),
        seq_lens=lens.to(torch.int32),
        block_tables=tables.to(torch.int32).view(num_seqs, width),
        slot_mapping=slots,
        max_query_len=max_query_len,
        max_seq_len=max_seq_len,
    )
    return ids, positions, attn, lora_slots if has_lora else None


class TensorParallelWorkers:
    """Rank 0's handle on ranks 1..tp-1: starts them, tells them each model call, stops them."""

    def __init__(self, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> None:
        size = config.tensor_parallel_size
        # Refuse a bad split before paying for any process start.
        check_tensor_parallel(read_spec(config.model, dtype), size)
        if device.type == "cuda" and (device.index or 0) + size > torch.cuda.device_count():
            raise ValueError(
                f"tensor_parallel_size {size} from {device} needs CUDA devices up to "
                f"{(device.index or 0) + size - 1}; {torch.cuda.device_count()} are visible"
            )
        context = torch.multiprocessing.get_context("spawn")
        store = TensorParallelGroup.create_store(size)
        # CPU ranks run at the same time on the same cores: a worker takes an equal share of rank 0's
        # intra-op threads rather than as many again (GPU ranks barely use them).
        num_threads = max(1, torch.get_num_threads() // size)
        self.processes: list[BaseProcess] = []
        self._channels: list[Connection] = []
        for rank in range(1, size):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(
                    config,
                    rank,
                    rank_device(device, rank),
                    dtype,
                    store.port,
                    theirs,
                    num_threads,
                ),
                name=f"tp-worker-{rank}",
                daemon=True,
            )
            process.start()
            # Only the worker may hold its end: a dead worker must close the pipe (EPIPE on our sends).
            theirs.close()
            self.processes.append(process)
            self._channels.append(ours)
        # An engine dropped without shutdown() still stops its workers (at collection or exit).
        self._finalizer = weakref.finalize(self, _stop_workers, self.processes, self._channels)
        try:
            self._await_workers(store)
            self.group = TensorParallelGroup.join(store, 0, size, device)
        except BaseException:
            self._finalizer()
            raise
        self.group.diagnose = self._diagnose

    def send_forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        lora_slots: torch.Tensor | None,
    ) -> None:
        """Before rank 0's forward: the workers run the same forward on their shards."""
        num_seqs, width = attn.block_tables.shape
        has_lora = int(lora_slots is not None)
        self._send(_FORWARD, input_ids.numel(), num_seqs, width, attn.max_query_len, attn.max_seq_len, has_lora)
        self.group.broadcast(pack_step(input_ids, positions, attn, lora_slots))

    def send_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Before rank 0's logits: the workers compute their vocabulary slice for the same rows. Returns
        the rows as broadcast (contiguous)."""
        hidden = hidden.contiguous()
        self._send(_LOGITS, hidden.shape[0], 0, 0, 0, 0, 0)
        self.group.broadcast(hidden)
        return hidden

    def attach_lora(self, name: str, path: str, slot: int) -> None:
        """The workers load the adapter from `path` (the same files rank 0 just read) into `slot`."""
        self._send(_ATTACH_LORA, slot, 0, 0, 0, 0, 0, payload=(name, path))

    def detach_lora(self, slot: int) -> None:
        self._send(_DETACH_LORA, slot, 0, 0, 0, 0, 0)

    def shutdown(self) -> None:
        """Stop the workers (waiting for them to exit) and release the process group. Idempotent."""
        self._finalizer()
        self.group.destroy()

    def _await_workers(self, store: TCPStore) -> None:
        """Wait until every worker has reached the store, failing at once if one exits first (joining the
        group itself would wait out the whole timeout for it)."""
        keys = [_joined_key(rank) for rank in range(1, len(self.processes) + 1)]
        while not store.check(keys):
            if any(process.exitcode is not None for process in self.processes):
                raise TensorParallelError(f"tensor-parallel workers failed to start: {self._diagnose()}")
            time.sleep(0.05)

    def _send(self, kind: int, *sizes: int, payload: object = None) -> None:
        """The header of a call, and its `payload` (pickled) where it has one."""
        header = _HEADER.pack(kind, *sizes)
        try:
            for channel in self._channels:
                channel.send_bytes(header)
                if payload is not None:
                    channel.send(payload)
        except OSError as error:  # a worker is gone: its end of the pipe is closed
            raise TensorParallelError(f"tensor-parallel worker lost: {self._diagnose()}") from error

    def _diagnose(self) -> str:
        """What happened to each worker; stops those still running (their group is unusable now)."""
        reports = []
        for rank, (process, channel) in enumerate(zip(self.processes, self._channels, strict=True), start=1):
            # A worker whose collective failed reports and exits within moments.
            process.join(timeout=2.0)
            message = ""
            try:
                if channel.poll():
                    message = str(channel.recv()).strip().splitlines()[-1]
            except (EOFError, OSError):
                pass
            if process.exitcode is None:
                process.kill()
                process.join()
                state = "was stopped (still running after the group failed)"
            else:
                state = f"exited with code {process.exitcode}"
            reports.append(f"worker rank {rank} {state}" + (f": {message}" if message else ""))
        return "; ".join(reports)


class RankZeroModel:
    """Rank 0's view of a tensor-parallel model: the same calls as CausalLM, each first mirrored on the
    workers so that the collectives inside line up."""

    def __init__(self, model: CausalLM, workers: TensorParallelWorkers) -> None:
        self.model = model
        self.spec = model.spec
        self.num_kv_heads = model.num_kv_heads
        self._workers = workers

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        attn: AttentionMetadata,
        lora_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._workers.send_forward(input_ids, positions, attn, lora_slots)
        return self.model.forward(input_ids, positions, kv_cache, attn, lora_slots)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(self._workers.send_logits(hidden))


def _joined_key(rank: int) -> str:
    return f"tp-worker-{rank}-connected"


def _stop_workers(processes: list[BaseProcess], channels: list[Connection]) -> None:
    for channel in channels:
        try:
            channel.send_bytes(_HEADER.pack(_STOP, 0, 0, 0, 0, 0, 0))
        except OSError:
            pass
    for process in processes:
        process.join(timeout=_JOIN_SECONDS)
        if process.exitcode is None:
            logger.warning("tensor-parallel worker %s did not stop; killing it", process.name)
            process.kill()
            process.join()
    for channel in channels:
        channel.close()


def _worker_main(
    config: EngineConfig,
    rank: int,
    device: torch.device,
    dtype: torch.dtype,
    port: int,
    channel: Connection,
    num_threads: int,
) -> None:
    """Entry point of worker rank `rank` (a spawned process)."""
    torch.set_num_threads(num_threads)
    group: TensorParallelGroup | None = None
    try:
        store = TensorParallelGroup.connect_store(port, config.tensor_parallel_size)
        store.set(_joined_key(rank), "1")
        group = TensorParallelGroup.join(store, rank, config.tensor_parallel_size, device)
        shard = ModelShard(replace(config, device=str(device)), device, dtype, group)
        _serve(shard, channel)
    except EOFError:
        pass  # rank 0 is gone; nobody is left to tell
    except BaseException:
        try:
            channel.send(traceback.format_exc())
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        if group is not None:
            group.destroy()


@torch.inference_mode()
def _serve(shard: ModelShard, channel: Connection) -> None:
    """Run the model calls rank 0 announces until it says stop (or its pipe closes: EOFError)."""
    group, device, model = shard.group, shard.device, shard.model
    while True:
        kind, *sizes = _HEADER.unpack(channel.recv_bytes())
        if kind == _STOP:
            return
        if kind == _FORWARD:
            num_tokens, num_seqs, width, max_query_len, max_seq_len, has_lora = sizes
            packed = torch.empty(
                packed_step_size(num_tokens, num_seqs, width, bool(has_lora)), dtype=torch.int64, device=device
            )
            group.broadcast(packed)
            input_ids, positions, attn, lora_slots = unpack_step(
                packed, num_seqs, width, max_query_len, max_seq_len, bool(has_lora)
            )
            model.forward(input_ids, positions, shard.kv_cache, attn, lora_slots)
        elif kind == _LOGITS:
            hidden = torch.empty((sizes[0], shard.spec.hidden_size), dtype=shard.dtype, device=device)
            group.broadcast(hidden)
            model.gather_logits(hidden)
        elif kind == _ATTACH_LORA:
            name, path = channel.recv()
            attach_adapter(model, load_adapter(name, path), sizes[0])
        elif kind == _DETACH_LORA:
            detach_adapter(model, sizes[0])

"""The tensor-parallel process group of one engine: setup, the few collectives the model needs, teardown.

Each engine owns its group object instead of torch.distributed's process-global default group, so one
process can host several engines (tests, benchmarks) and data-parallel engine instances never share
anything: rank 0 starts a TCPStore on a port the OS picks (port 0), and the workers it spawns connect to
that port. gloo carries CPU tensors; NCCL carries CUDA tensors, rank r on device base + r.

A collective that fails (a peer died, or stayed silent past `COLLECTIVE_TIMEOUT`) marks the group broken
and raises `TensorParallelError`; every later collective raises at once instead of waiting on a peer that
is gone. Rank 0 installs a `diagnose` hook so that message names the worker and how it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Longest a rank waits in one collective (or for peers to join). A dead peer is noticed sooner: its
# closed sockets fail gloo at once, and rank 0's next message to a dead worker fails on its closed pipe.
COLLECTIVE_TIMEOUT = timedelta(seconds=300)
_HOST = "127.0.0.1"
_CPU = torch.device("cpu")


class TensorParallelError(RuntimeError):
    """A rank of the tensor-parallel group failed; the engine cannot run further steps."""


class TensorParallelGroup:
    """This process's rank in its engine's tensor-parallel group. With size 1 there is no process group
    and every collective is the identity, so the single-device path pays one attribute test."""

    # `backend` is a c10d ProcessGroupGloo / ProcessGroupNCCL (typed Any: torch's stubs leave out the
    # collectives of c10d backends); `device` is where this rank's collective buffers live.
    def __init__(self, rank: int, size: int, backend: Any = None, device: torch.device = _CPU) -> None:
        self.rank = rank
        self.size = size
        self.device = device
        self._backend = backend
        # Rank 0's hook: describes what happened to the workers when a collective fails.
        self.diagnose: Callable[[], str] | None = None
        self._broken: str | None = None

    @staticmethod
    def single() -> TensorParallelGroup:
        return TensorParallelGroup(0, 1)

    @staticmethod
    def create_store(size: int) -> dist.TCPStore:
        """Rank 0's rendezvous store on a free localhost port (`store.port`), chosen by the OS."""
        return dist.TCPStore(_HOST, 0, size, True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)

    @staticmethod
    def connect_store(port: int, size: int) -> dist.TCPStore:
        """A worker's connection to rank 0's store."""
        return dist.TCPStore(_HOST, port, size, False, timeout=COLLECTIVE_TIMEOUT)

    @staticmethod
    def join(store: dist.Store, rank: int, size: int, device: torch.device) -> TensorParallelGroup:
        """Join the group through the shared store; blocks until all ranks have joined. gloo for CPU
        devices, NCCL for CUDA devices."""
        backend: Any
        if device.type == "cuda":
            torch.cuda.set_device(device)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = COLLECTIVE_TIMEOUT
            backend = dist.ProcessGroupNCCL(store, rank, size, options)
        else:
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # not in the stubs
            options._timeout = COLLECTIVE_TIMEOUT
            # All ranks share this host: gloo listens on loopback, never on a network interface.
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=_HOST)]
            backend = dist.ProcessGroupGloo(store, rank, size, options)
        return TensorParallelGroup(rank, size, backend, device)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.size > 1:
            self._wait(lambda backend: backend.allreduce([tensor]))
        return tensor

    def all_reduce_min(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp(dist.ReduceOp.MIN)
        self._wait(lambda backend: backend.allreduce([tensor], options))
        return int(tensor.item())

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` into every rank's tensor of the same shape and dtype, in place."""
        if self.size > 1:
            options = dist.BroadcastOptions()
            options.rootRank = 0
            self._wait(lambda backend: backend.broadcast([tensor], options))

    def gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Rank 0 gets every rank's `tensor` concatenated along the last dimension, in rank order; the
        other ranks send theirs and get None."""
        if self.size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)] if self.rank == 0 else []
        options = dist.GatherOptions()
        options.rootRank = 0
        self._wait(lambda backend: backend.gather([parts] if parts else [], [tensor], options))
        return torch.cat(parts, dim=-1) if parts else None

    def destroy(self) -> None:
        """Release the group's connections (and NCCL communicators); collectives fail afterwards."""
        backend, self._backend = self._backend, None
        self._broken = self._broken or "the tensor-parallel group was shut down"
        if backend is not None and hasattr(backend, "shutdown"):
            backend.shutdown()

    def _wait(self, launch: Callable[[Any], dist.Work]) -> None:
        if self._broken is not None:
            raise TensorParallelError(self._broken)
        assert self._backend is not None, "a group of size > 1 has a backend"
        try:
            launch(self._backend).wait()
        except Exception as error:
            detail = self.diagnose() if self.diagnose is not None else ""
            self._broken = (
                f"tensor-parallel rank {self.rank} lost its group: {detail or error}; "
                "the engine cannot run further steps"
            )
            raise TensorParallelError(self._broken) from error

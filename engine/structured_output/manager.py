"""Per-request grammar state for the engine: parks requests while their grammar compiles, fills one
token bitmask per step for all constrained rows, and advances each matcher on its sampled token.

Waiting for a compile (design choice): a constrained request is parked here at add_request and handed
to the scheduler only once its grammar is compiled, so the scheduler never sees an unschedulable
request and needs no extra state; everything else keeps running meanwhile. Compiling in
AsyncEngine.submit instead would leave LLMEngine (offline use, tests, benchmarks) without the feature.
Only the engine thread calls this class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

import torch
import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from engine.request import Request
from engine.structured_output.bitmask import GrammarBitmask
from engine.structured_output.compiler import GrammarCompiler
from engine.structured_output.grammars import build_grammar
from engine.structured_output.params import StructuredOutputsParams

logger = logging.getLogger(__name__)


@dataclass
class CompileResults:
    """Parked requests whose compile finished since the last poll."""

    # Grammar ready, matcher created: schedule them.
    ready: list[Request] = field(default_factory=list)
    # Compile failed: finish them with this error.
    failed: list[tuple[Request, str]] = field(default_factory=list)


class StructuredOutputManager:
    """The engine's structured-output state; requests without a constraint never touch it."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        max_num_seqs: int,
        device: torch.device,
    ) -> None:
        self.compiler = GrammarCompiler(tokenizer, vocab_size, stop_token_ids)
        self.vocab_size = vocab_size
        # One bitmask for the largest possible batch, reused every step; pinned so the copy to the
        # device does not block.
        bitmask = xgr.allocate_token_bitmask(max_num_seqs, vocab_size)
        self._bitmask = bitmask.pin_memory() if device.type == "cuda" else bitmask
        # Fills the rows in parallel on big machines ("auto": half the hardware threads).
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto")
        self._matchers: dict[str, xgr.GrammarMatcher] = {}
        # Request id -> (request, its compile): requests not yet handed to the scheduler.
        self._compiling: dict[str, tuple[Request, Future[xgr.CompiledGrammar]]] = {}

    @staticmethod
    def validate(params: StructuredOutputsParams) -> None:
        """Raise ValueError for a constraint that cannot be compiled or would not be enforced.
        Thread-safe: callers validate before queueing, from any thread."""
        build_grammar(params)

    # -- lifecycle ------------------------------------------------------------------------------

    def add(self, request: Request) -> bool:
        """Start (or share) the request's compile; True when the grammar is ready, so it may be
        scheduled now. Otherwise it stays parked until `poll` reports it."""
        params = request.params.structured_outputs
        assert params is not None, "only constrained requests are added"
        future = self.compiler.compile(params)
        if future.done() and future.exception() is None:
            self._matchers[request.request_id] = xgr.GrammarMatcher(future.result())
            return True
        self._compiling[request.request_id] = (request, future)
        return False

    def poll(self) -> CompileResults:
        """Collect parked requests whose compile finished, in arrival order. Ready ones leave the park;
        failed ones stay parked (never scheduled) until the engine aborts and `remove`s them."""
        results = CompileResults()
        for request_id, (request, future) in list(self._compiling.items()):
            if not future.done():
                continue
            error = future.exception()
            if error is None:
                del self._compiling[request_id]
                self._matchers[request_id] = xgr.GrammarMatcher(future.result())
                results.ready.append(request)
            else:
                params = request.params.structured_outputs
                assert params is not None
                self.compiler.forget_failed(params)
                results.failed.append((request, f"structured_outputs could not be compiled: {error}"))
        return results

    def wait_for_compile(self, timeout: float) -> None:
        """Block until some parked compile finishes or `timeout` seconds pass (when nothing else runs)."""
        if self._compiling:
            wait([future for _, future in self._compiling.values()], timeout, FIRST_COMPLETED)

    def is_parked(self, request_id: str) -> bool:
        return request_id in self._compiling

    def remove(self, request_id: str) -> None:
        """Forget a finished or aborted request (a no-op for unconstrained ones)."""
        self._matchers.pop(request_id, None)
        self._compiling.pop(request_id, None)

    # -- per step -------------------------------------------------------------------------------

    def fill_bitmask(self, sampled: Sequence[Request]) -> GrammarBitmask | None:
        """One bitmask for this step's sampled rows (row i = sampled[i]); None when none is constrained."""
        rows = [row for row, request in enumerate(sampled) if request.request_id in self._matchers]
        if not rows:
            return None
        matchers = [self._matchers[sampled[row].request_id] for row in rows]
        bitmask = self._bitmask[: len(sampled)]
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)
        return GrammarBitmask(bitmask=bitmask, rows=rows, vocab_size=self.vocab_size)

    def accept(self, request: Request, token: int) -> str | None:
        """Advance the request's matcher by its sampled token. Returns the finish reason the grammar
        imposes: "stop" once it is complete, "abort" if it rejected the token (possible only when the
        mask was not applied, e.g. min_tokens banned the only allowed token), None otherwise."""
        matcher = self._matchers.get(request.request_id)
        if matcher is None:
            return None
        if not matcher.accept_token(token):
            logger.error("request %s: the grammar rejected sampled token %d", request.request_id, token)
            return "abort"
        return "stop" if matcher.is_terminated() else None

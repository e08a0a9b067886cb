"""Compiles each distinct constraint once, on a background pool, never on the engine loop.

A compiled grammar (xgrammar.CompiledGrammar: the grammar plus per-state token-mask caches over the
vocabulary) depends only on the constraint and the tokenizer, so requests with the same (kind, spec)
share one compile: the cache maps that key to a Future, and a second request arriving while the
first compile runs waits on the same Future. The tokenizer info (the decoded vocabulary) is built
once, lazily, on the pool too: engines that never see a constrained request never pay for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from engine.structured_output.grammars import build_grammar
from engine.structured_output.params import StructuredOutputsParams

# Distinct compiled grammars kept; the least recently used is dropped beyond this.
CACHE_ENTRIES = 256


class GrammarCompiler:
    """Owns the xgrammar compiler and the compile cache. `compile` is called from one thread (the
    engine's); the futures complete on the pool's threads."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        *,
        max_threads: int = 2,
    ) -> None:
        # The logits width: it may exceed the tokenizer's size (padded embeddings), and the bitmask must
        # cover every column or the padding ids stay samplable.
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._stop_token_ids = sorted(set(stop_token_ids))
        self._max_threads = max_threads
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grammar-compile")
        self._setup_lock = threading.Lock()
        self._compiler: xgr.GrammarCompiler | None = None
        self._cache: OrderedDict[tuple[str, str, bool], Future[xgr.CompiledGrammar]] = OrderedDict()
        # Compiles actually started (cache misses), for tests and metrics.
        self.num_compiles = 0

    def compile(self, params: StructuredOutputsParams) -> Future[xgr.CompiledGrammar]:
        """The compiled grammar of `params`, shared with every earlier request with the same key."""
        key = params.cache_key
        future = self._cache.get(key)
        if future is not None:
            self._cache.move_to_end(key)
            return future
        future = self._pool.submit(self._compile, params)
        self.num_compiles += 1
        self._cache[key] = future
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return future

    def forget_failed(self, params: StructuredOutputsParams) -> None:
        """Drop a failed compile from the cache so that a later request retries it."""
        self._cache.pop(params.cache_key, None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        return self._xgrammar_compiler().compile_grammar(build_grammar(params))

    def _xgrammar_compiler(self) -> xgr.GrammarCompiler:
        with self._setup_lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_token_ids
                )
                # Our cache above is the only one: xgrammar's own would hold the same grammars twice.
                self._compiler = xgr.GrammarCompiler(info, max_threads=self._max_threads, cache_enabled=False)
            return self._compiler

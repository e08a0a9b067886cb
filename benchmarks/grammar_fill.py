"""How long xgrammar takes to fill one step's token bitmask for a batch of JSON-schema requests, by the
number of threads its BatchGrammarMatcher uses, against filling the rows one by one. Not a test.

    python -m benchmarks.grammar_fill --tokenizer DIR [--rows 16] [--steps 200]

Every matcher sits inside a free string of the benchmark schema (the state most of a long JSON answer
is generated in) and advances one token per step, as in decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from benchmarks.engine_bench import LONG_TEXT_SCHEMA

Fill = Callable[[list[xgr.GrammarMatcher], torch.Tensor], None]


def make_matchers(compiled: xgr.CompiledGrammar, prefix: list[int], rows: int) -> list[xgr.GrammarMatcher]:
    matchers = []
    for _ in range(rows):
        matcher = xgr.GrammarMatcher(compiled)
        for token in prefix:
            assert matcher.accept_token(token), f"the schema rejected prefix token {token}"
        matchers.append(matcher)
    return matchers


def timed_fills(fill: Fill, matchers: list[xgr.GrammarMatcher], bitmask: torch.Tensor, filler_token: int, steps: int) -> float:
    """Median seconds per fill; each matcher accepts one letter of its string between fills."""
    timings = []
    for _ in range(steps):
        begin = time.perf_counter()
        fill(matchers, bitmask)
        timings.append(time.perf_counter() - begin)
        for matcher in matchers:
            assert matcher.accept_token(filler_token), "the filler token left the string"
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab_size = len(tokenizer)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(LONG_TEXT_SCHEMA))
    prefix = tokenizer.encode('{"field_0": "The', add_special_tokens=False)
    filler = tokenizer.encode(" a", add_special_tokens=False)[0]
    bitmask = xgr.allocate_token_bitmask(args.rows, vocab_size)
    rows = list(range(args.rows))

    def one_by_one(matchers: list[xgr.GrammarMatcher], mask: torch.Tensor) -> None:
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(mask, row)

    candidates: list[tuple[str, Fill]] = [("one by one", one_by_one)]
    for threads in (1, 2, 4, 8, "auto"):
        batch = xgr.BatchGrammarMatcher(max_threads=threads)
        candidates.append(
            (f"batch, max_threads={threads}", lambda m, mask, b=batch: b.batch_fill_next_token_bitmask(m, mask, rows))
        )
    results = {}
    print(f"{args.rows} rows, vocabulary {vocab_size}, {os.cpu_count()} CPUs, median of {args.steps} steps")
    for name, fill in candidates:
        matchers = make_matchers(compiled, prefix, args.rows)
        seconds = timed_fills(fill, matchers, bitmask, filler, args.steps)
        results[name] = round(seconds * 1e3, 4)
        print(f"  {name:<24} {seconds * 1e3:8.3f} ms per fill")
    print(json.dumps({"grammar_fill_ms": results, "rows": args.rows, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()

"""What LoRA adapters cost the engine: one engine with two adapters loaded, the same requests run with no
adapter, all on one adapter, and mixed (half on two adapters, half on the base model), alternated.

    python -m benchmarks.lora_bench [--dtype float32] [--rank 8] [--rounds 2]

16 requests of 128 random prompt tokens and 64 output tokens each (ignore_eos, greedy, prefix caching off so
that every round prefills), adapters PEFT writes with random weights on all seven projections. Prints
output tokens/s of each kind per round and, from the last round, each kind's ratio to no adapter, then a
JSON line. Not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.engine_bench import DEFAULT_MODEL
from engine import EngineConfig, LLMEngine, SamplingParams
from tests.lora_adapter import write_random_adapter

NUM_REQUESTS, PROMPT_TOKENS, OUTPUT_TOKENS = 16, 128, 64
KINDS: dict[str, str | None | list[str | None]] = {
    "none": None,
    "one adapter": "first",
    "mixed": ["first", "second", None, None] * (NUM_REQUESTS // 4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        adapters = {
            name: str(write_random_adapter(Path(args.model), Path(folder) / name, seed=seed, rank=args.rank))
            for seed, name in enumerate(("first", "second"))
        }
        engine = LLMEngine(
            EngineConfig(
                model=str(args.model),
                dtype=args.dtype,
                device="cpu",
                max_model_len=1024,
                enable_prefix_caching=False,
                lora_modules=adapters,
            )
        )
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(100, 40000, (PROMPT_TOKENS,), generator=generator).tolist() for _ in range(NUM_REQUESTS)]
        params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
        engine.generate(prompts[:2], params, lora_name="first")  # warm-up
        rates: dict[str, float] = {}
        for round_index in range(args.rounds):
            for kind, lora_name in KINDS.items():
                start = time.perf_counter()
                engine.generate(prompts, params, lora_name=lora_name)
                rates[kind] = NUM_REQUESTS * OUTPUT_TOKENS / (time.perf_counter() - start)
                print(f"round {round_index + 1} {args.dtype} {kind}: {rates[kind]:.1f} output tok/s", flush=True)
    ratios = {kind: rate / rates["none"] for kind, rate in rates.items()}
    print("ratios to no adapter: " + ", ".join(f"{kind} {ratio:.3f}" for kind, ratio in ratios.items()))
    print(json.dumps({"dtype": args.dtype, "rank": args.rank, "tok_s": rates, "ratio": ratios}))


if __name__ == "__main__":
    main()

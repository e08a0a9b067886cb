"""Engine throughput and prefix-cache TTFT against Hugging Face transformers baselines.

    python -m benchmarks.engine_bench [--model DIR] [--device auto|cpu|cuda] [--num-requests 64]

Workload (seeded): prompts of 32-512 random token ids, 16-256 output tokens each, ignore_eos, all
submitted at once. Baselines: HF `generate` one request at a time, and HF static batches of 16
(left-padded; a batch runs until its longest request is done, only requested tokens count). The HF
baselines run on a subset of the workload and are reported per output token, which extrapolates
to the whole workload. TTFT: a 1,000-token prompt, first on a cold cache, then repeated (hit).
Structured outputs: decode step time at batch 16, unconstrained and with every row under a JSON schema
(the bitmask fill and its application are the difference). The engine workload runs again over each KV
cache dtype of --also-kv-cache-dtype that differs from the model's (float32 on the CPU: bfloat16 and fp8;
a 16-bit model on an Ada or Hopper GPU: fp8). Prints a table and one JSON line. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.kv_cache import resolve_cache_dtype
from engine.structured_output import StructuredOutputsParams

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct"


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lengths: list[int]


def make_workload(num_requests: int, vocab_size: int, seed: int) -> Workload:
    rng = random.Random(seed)
    # Ids from the middle of the vocabulary: no special tokens.
    prompts = [[rng.randrange(100, vocab_size) for _ in range(rng.randint(32, 512))] for _ in range(num_requests)]
    return Workload(prompts, [rng.randint(16, 256) for _ in range(num_requests)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_engine(engine: LLMEngine, workload: Workload) -> tuple[float, int]:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in workload.output_lengths]
    engine.generate([workload.prompts[0][:32]], SamplingParams(temperature=0.0, max_tokens=2))  # warm-up
    start = time.perf_counter()
    results = engine.generate(workload.prompts, params)
    elapsed = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    assert tokens == sum(workload.output_lengths), "ignore_eos requests must run to max_tokens"
    return elapsed, tokens


def hf_generate(model: Any, prompts: list[list[int]], new_tokens: int, device: torch.device) -> None:
    """Greedy HF generate of a left-padded batch for exactly `new_tokens` tokens (EOS suppressed)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    model.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
    )


def bench_hf(
    model_dir: str, workload: Workload, device: torch.device, dtype: torch.dtype, single: int, batches: int
) -> dict[str, float]:
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device).eval()
    out: dict[str, float] = {}
    with torch.inference_mode():
        hf_generate(model, [workload.prompts[0][:32]], 2, device)  # warm-up
        start = time.perf_counter()
        for prompt, n in zip(workload.prompts[:single], workload.output_lengths[:single], strict=True):
            hf_generate(model, [prompt], n, device)
        sync(device)
        tokens = sum(workload.output_lengths[:single])
        out["hf_single_tokens_per_s"] = tokens / (time.perf_counter() - start)
        out["hf_single_requests"] = single
        if not batches:
            return out
        start = time.perf_counter()
        useful = 0
        for batch in range(batches):
            prompts = workload.prompts[batch * 16 : (batch + 1) * 16]
            lengths = workload.output_lengths[batch * 16 : (batch + 1) * 16]
            hf_generate(model, prompts, max(lengths), device)
            useful += sum(lengths)
        sync(device)
        out["hf_static16_tokens_per_s"] = useful / (time.perf_counter() - start)
        out["hf_static16_requests"] = batches * 16
    return out


def bench_ttft(engine: LLMEngine, vocab_size: int, repeats: int, seed: int) -> tuple[float, float]:
    """Median TTFT of a 1,000-token prompt on a cold cache, and of the same prompt repeated (cache hit)."""
    rng = random.Random(seed)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    cold, warm = [], []
    # Untimed first pair: on CUDA the first prompt of a new shape compiles Triton kernel variants (a lone
    # sequence is its own specialisation), which cost 0.4 s per TTFT on an H200 when counted.
    for _ in range(2):
        engine.generate([[rng.randrange(100, vocab_size) for _ in range(1000)]], params)
    for _ in range(repeats):
        prompt = [rng.randrange(100, vocab_size) for _ in range(1000)]
        [first] = engine.generate([prompt], params)
        [second] = engine.generate([prompt], params)
        assert second.num_cached_tokens > 0, "the repeated prompt must hit the prefix cache"
        assert first.time_to_first_token is not None and second.time_to_first_token is not None
        cold.append(first.time_to_first_token)
        warm.append(second.time_to_first_token)
    return statistics.median(cold), statistics.median(warm)


# Keeps every row inside free JSON strings (the widest mask, the costliest fill) for longer than any timed
# run: 32 required fields of at least 64 characters each. One string with minLength 2000 would do the same
# but sends xgrammar down a slow path for long counted repetitions (60-150 us per accepted token against
# 2-4 us here), which is not what a real schema costs.
LONG_TEXT_SCHEMA = {
    "type": "object",
    "properties": {f"field_{i}": {"type": "string", "minLength": 64} for i in range(32)},
    "required": [f"field_{i}" for i in range(32)],
}


def bench_structured(engine: LLMEngine, vocab_size: int, steps: int, seed: int) -> tuple[float, float, float]:
    """Median decode step time (s) of 16 running requests, unconstrained and under a JSON schema, and the
    median time of the mask work alone (fill the batch bitmask, apply it to [16, vocab] logits)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(100, vocab_size) for _ in range(64)] for _ in range(16)]
    timings: dict[str, list[float]] = {"warm-up": [], "plain": [], "json": [], "mask": []}
    logits = torch.zeros((len(prompts), vocab_size), device=engine.runner.device)
    # An untimed run first: the first batch after the engine's earlier work stepped faster than those after
    # it, whatever their kind (session 24, float32: 39.5 ms, then 41.2 for the next unconstrained one). Then
    # three runs of each kind alternate, so that their order and the machine's noise hit both alike.
    for run, kind in enumerate(["warm-up", *(["plain", "json"] * 3)]):
        constraint = StructuredOutputsParams(json=LONG_TEXT_SCHEMA) if kind == "json" else None
        params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True, structured_outputs=constraint)
        ids = [f"structured-{run}-{index}" for index in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts, strict=True):
            engine.add_request(request_id, prompt, params)
        started: set[str] = set()
        while len(started) < len(ids):  # prefill (and compile) until every request decodes
            started.update(output.request_id for output in engine.step())
        for _ in range(steps):
            begin = time.perf_counter()
            outputs = engine.step()
            sync(engine.runner.device)
            timings[kind].append(time.perf_counter() - begin)
            assert len(outputs) == len(ids), "every request must decode in every measured step"
        for _ in range(steps if kind == "json" else 0):
            begin = time.perf_counter()
            mask = engine.structured.fill_bitmask(engine.scheduler.running)
            assert mask is not None
            mask.apply(logits)
            sync(engine.runner.device)
            timings["mask"].append(time.perf_counter() - begin)
        for request_id in ids:
            engine.abort_request(request_id)
        engine.step()
    plain, constrained, mask_only = (statistics.median(timings[kind]) for kind in ("plain", "json", "mask"))
    return plain, constrained, mask_only


def other_cache_dtypes(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> list[str]:
    """The --also-kv-cache-dtype names that give this model another cache dtype on this device; those the
    engine refuses here (say fp8 on an older GPU) are named and skipped."""
    names = []
    for name in args.also_kv_cache_dtype.split(","):
        if name in ("", "none"):
            continue
        try:
            if resolve_cache_dtype(name, dtype, device) != dtype:
                names.append(name)
        except ValueError as error:
            print(f"skipping the {name} KV cache: {error}")
    return names


def build_engine(args: argparse.Namespace, **overrides: Any) -> LLMEngine:
    """The engine the command line asks for, with `overrides` of its EngineConfig (another dtype, ...)."""
    settings = {"model": args.model, "device": args.device, "dtype": args.dtype, "max_model_len": 2048}
    return LLMEngine(EngineConfig(**{**settings, **overrides}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--hf-single", type=int, default=4, help="requests the one-at-a-time baseline runs")
    parser.add_argument("--hf-batches", type=int, default=1, help="static batches of 16 the batched baseline runs")
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--structured-steps", type=int, default=32, help="decode steps timed per structured run")
    parser.add_argument(
        "--also-dtype",
        default="bfloat16",
        help="run the engine workload once more in this dtype (bfloat16 halves the KV traffic and uses "
        "the CPU's bf16 matmuls); 'none' skips it",
    )
    parser.add_argument(
        "--also-kv-cache-dtype",
        default="bfloat16,fp8",
        help="run the engine workload once more with the KV cache in each of these dtypes that differs from "
        "the model's and runs on this device (comma-separated; bfloat16 under a float32 model on the CPU halves "
        "the bytes attention reads, fp8 quarters them, or halves a 16-bit model's on CUDA); 'none' skips it",
    )
    parser.add_argument(
        "--also-eager",
        action="store_true",
        help="CUDA: run the engine workload once more without CUDA graphs (enforce_eager), for their gain",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    engine = build_engine(args)
    device, dtype = engine.runner.device, engine.runner.dtype
    vocab_size = engine.runner.spec.vocab_size
    workload = make_workload(args.num_requests, vocab_size, args.seed)
    elapsed, tokens = bench_engine(engine, workload)
    engine_stats = engine.stats()
    cold, warm = bench_ttft(engine, vocab_size, args.ttft_repeats, args.seed + 1)
    plain_step, json_step, mask_time = bench_structured(engine, vocab_size, args.structured_steps, args.seed + 2)
    hf = bench_hf(args.model, workload, device, dtype, args.hf_single, args.hf_batches)
    other_dtype = None if args.also_dtype in ("none", str(dtype).removeprefix("torch.")) else args.also_dtype
    # The same workload again on other engines, one at a time: another dtype, other KV cache dtypes, eager.
    variants: list[tuple[str, dict[str, Any]]] = [("dtype", {"dtype": other_dtype})] if other_dtype else []
    variants += [(f"kv:{name}", {"kv_cache_dtype": name}) for name in other_cache_dtypes(args, dtype, device)]
    if args.also_eager and device.type == "cuda":
        variants.append(("eager", {"enforce_eager": True}))
    variant_tokens_per_s: dict[str, float] = {}
    for label, overrides in variants:
        engine.shutdown()
        del engine  # on CUDA its KV pool must go before the next one sizes its own
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        engine = build_engine(args, **overrides)
        variant_elapsed, variant_tokens = bench_engine(engine, workload)
        variant_tokens_per_s[label] = round(variant_tokens / variant_elapsed, 1)
    kv_tokens_per_s = {
        label.removeprefix("kv:"): rate for label, rate in variant_tokens_per_s.items() if label.startswith("kv:")
    }

    result = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "num_requests": args.num_requests,
        "prompt_tokens": sum(len(p) for p in workload.prompts),
        "output_tokens": tokens,
        "engine_seconds": round(elapsed, 2),
        "engine_tokens_per_s": round(tokens / elapsed, 1),
        "engine_preemptions": engine_stats.num_preemptions,
        "engine_eager_tokens_per_s": variant_tokens_per_s.get("eager", 0.0),
        "engine_other_dtype": other_dtype,
        "engine_other_dtype_tokens_per_s": variant_tokens_per_s.get("dtype", 0.0),
        "engine_kv_cache_dtype_tokens_per_s": kv_tokens_per_s,
        "hf_single_tokens_per_s": round(hf["hf_single_tokens_per_s"], 1),
        "hf_single_requests_measured": int(hf["hf_single_requests"]),
        "hf_static16_tokens_per_s": round(hf.get("hf_static16_tokens_per_s", 0.0), 1),
        "hf_static16_requests_measured": int(hf.get("hf_static16_requests", 0)),
        "ttft_1000_cold_s": round(cold, 3),
        "ttft_1000_prefix_hit_s": round(warm, 3),
        "step16_plain_ms": round(plain_step * 1000, 2),
        "step16_json_schema_ms": round(json_step * 1000, 2),
        "step16_mask_ms": round(mask_time * 1000, 3),
        "structured_overhead_pct": round((json_step / plain_step - 1) * 100, 1),
        "structured_mask_pct_of_step": round(mask_time / plain_step * 100, 2),
    }
    print(f"engine benchmark on {device} ({result['dtype']}, {result['torch_threads']} torch threads)")
    print(f"workload: {args.num_requests} requests, {result['prompt_tokens']} prompt / {tokens} output tokens")
    print(f"{'system':<40}{'output tok/s':>14}")
    print(f"{'engine (continuous batching)':<40}{result['engine_tokens_per_s']:>14}")
    if other_dtype:
        print(f"{'engine, ' + other_dtype:<40}{result['engine_other_dtype_tokens_per_s']:>14}")
    for kv_dtype, kv_rate in kv_tokens_per_s.items():
        print(f"{'engine, ' + kv_dtype + ' KV cache':<40}{kv_rate:>14}")
    if "eager" in variant_tokens_per_s:
        print(f"{'engine, eager (no CUDA graphs)':<40}{result['engine_eager_tokens_per_s']:>14}")
    print(f"{'HF one at a time':<40}{result['hf_single_tokens_per_s']:>14}")
    print(f"{'HF static batches of 16':<40}{result['hf_static16_tokens_per_s']:>14}")
    print(
        f"HF baselines measured on {result['hf_single_requests_measured']} (single) and "
        f"{result['hf_static16_requests_measured']} (batched) requests of the same workload; "
        "tok/s extrapolates per output token."
    )
    print(f"TTFT, 1,000-token prompt: cold {cold * 1000:.1f} ms, prefix-cache hit {warm * 1000:.1f} ms")
    print(
        f"decode step at batch 16: {plain_step * 1000:.1f} ms unconstrained, {json_step * 1000:.1f} ms under a "
        f"JSON schema ({result['structured_overhead_pct']:+.1f}%); the mask alone (fill + apply) "
        f"{mask_time * 1000:.2f} ms = {result['structured_mask_pct_of_step']:.1f}% of the step"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

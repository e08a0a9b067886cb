"""Speculative decoding (n-gram by default; a draft model with --speculative-config '{"model": DIR, ...}')
against plain decoding: the same engine, built twice, one after the other.

    python -m benchmarks.spec_bench [--dtype float32] [--concurrency 1 8] [--speculative-config JSON] [--served]

Two workloads, greedy: chat requests that ask the model to repeat or lightly edit a passage of their
prompt (the output copies the prompt: what prompt lookup is for), and benchmarks.engine_bench's seeded
random-token workload (16 of its requests, ignore_eos: nothing to look up but what the model repeats by
itself). Each runs at every concurrency level on both engines, which must produce the same tokens. Prints
output tokens/s, time per output token p50 and the speedup, the share of draft tokens accepted, then a
JSON line. With --served, the copy requests instead go one at a time through the whole stack (frontend ->
tritonserver -> engine, the cpu-default profile rendered with and without speculative_config), greedy and
at temperature 0.7 (sampled answers differ between the two stacks, so their token counts do too). Not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.engine_bench import DEFAULT_MODEL, Workload, make_workload
from benchmarks.serving_bench import MODEL_NAME, PROFILE, RunResult, run_engine
from benchmarks.sse_client import post_events
from engine import EngineConfig, LLMEngine, SpeculativeConfig
from ensemble_configs.render import render_variant
from tests.servers import ROOT, start_frontend, start_triton

CHECKPOINT = ROOT / "models" / MODEL_NAME

PASSAGES = [
    "The library opens at nine in the morning and closes at six in the evening. Visitors may borrow up to "
    "five books at a time, and each loan lasts three weeks. Late returns cost ten cents a day.",
    "To reset the router, unplug it from the wall, wait thirty seconds, and plug it back in. When the "
    "light turns green, open the settings page and enter the password printed on the back of the device.",
    "Our team meets every Monday at ten to review the previous week. Each person shares what they finished, "
    "what they are working on, and anything that blocks them. The meeting should never last more than "
    "thirty minutes.",
    "Water boils at one hundred degrees Celsius at sea level. At higher altitudes the air pressure is lower, "
    "so water boils at a lower temperature, and food takes longer to cook.",
]
INSTRUCTIONS = [
    "Repeat the following text exactly:\n\n",
    "Copy this paragraph, word for word:\n\n",
]


def copy_messages(count: int) -> list[str]:
    return [INSTRUCTIONS[index % len(INSTRUCTIONS)] + PASSAGES[index % len(PASSAGES)] for index in range(count)]


def copy_workload(engine: LLMEngine, count: int) -> Workload:
    """Chat prompts asking for a passage back; outputs end at EOS (at most 128 tokens)."""
    prompts = []
    for text in copy_messages(count):
        messages = [{"role": "user", "content": text}]
        chat = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(engine.tokenizer.encode(str(chat), add_special_tokens=False))
    return Workload(prompts, [128] * count)


def time_per_output_token_p50_ms(result: RunResult) -> float:
    """Per request, (last token - first token) / (tokens - 1): a step yielding several tokens counts for
    all of them (inter-arrival gaps would count it once)."""
    per_request = [
        (timing.token_times[-1] - timing.token_times[0]) / (len(timing.token_times) - 1)
        for timing in result.timings
        if len(timing.token_times) > 1
    ]
    return statistics.median(per_request) * 1000 if per_request else 0.0


async def stream_chat(base_url: str, text: str, temperature: float) -> list[float]:
    """Arrival time of each output token of one streamed chat answer (up to 128 tokens)."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 128,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    times: list[float] = []
    async for data in post_events(base_url, "/chat/completions", body):
        total = (json.loads(data).get("usage") or {}).get("completion_tokens", len(times))
        times += [time.perf_counter()] * (total - len(times))
    return times


def served_rows(speculative_config: str, dtype: str) -> list[dict[str, object]]:
    rows = []
    for system, value in (("plain", ""), ("spec", speculative_config)):
        with tempfile.TemporaryDirectory(prefix="spec-bench-") as name:
            folder = Path(name)
            overrides = {"dtype": dtype, "speculative_config": value}
            triton = start_triton(render_variant(PROFILE, overrides, folder, system), folder)
            try:
                frontend = start_frontend(CHECKPOINT, triton, folder, api_key=None)
                try:
                    asyncio.run(stream_chat(frontend.base_url, "Say hi.", 0.0))  # warm-up
                    for temperature in (0.0, 0.7):
                        start = time.perf_counter()
                        answers = [asyncio.run(stream_chat(frontend.base_url, text, temperature)) for text in copy_messages(8)]
                        seconds = time.perf_counter() - start
                        tokens = sum(len(times) for times in answers)
                        tpots = [(times[-1] - times[0]) / (len(times) - 1) for times in answers if len(times) > 1]
                        row = {
                            "system": system,
                            "temperature": temperature,
                            "output_tokens": tokens,
                            "tok_s": round(tokens / seconds, 1),
                            "tpot_p50_ms": round(statistics.median(tpots) * 1000, 1),
                        }
                        rows.append(row)
                        print(
                            f"served {system:>5} temperature {temperature}: {tokens} tokens, {row['tok_s']} tok/s, time per"
                            f" output token p50 {row['tpot_p50_ms']} ms",
                            flush=True,
                        )
                finally:
                    frontend.process.stop()
            finally:
                triton.process.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--speculative-config",
        default='{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}',
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--served", action="store_true", help="the copy requests through the whole stack instead")
    args = parser.parse_args()
    if args.served:
        rows = served_rows(args.speculative_config, args.dtype)
        print(json.dumps({"benchmark": "speculative_served", "config": args.speculative_config, "rows": rows}))
        return

    settings = {"model": args.model, "device": "cpu", "dtype": args.dtype, "max_model_len": 2048}
    speculative = SpeculativeConfig.from_json(args.speculative_config)
    rows = []
    for name in ("copy", "random"):
        for concurrency in args.concurrency:
            results = {}
            for system, config in (("plain", None), ("spec", speculative)):
                engine = LLMEngine(EngineConfig(**settings, speculative_config=config))  # type: ignore[arg-type]
                if name == "copy":
                    workload = copy_workload(engine, max(4, 2 * concurrency))
                else:
                    workload = make_workload(16, engine.runner.spec.vocab_size, args.seed)
                run_engine(engine, Workload([workload.prompts[0][:16]], [4]), 1)  # warm-up
                before = engine.stats()
                result = run_engine(engine, workload, concurrency, ignore_eos=name == "random")
                after = engine.stats()
                drafts = after.spec_draft_tokens_total - before.spec_draft_tokens_total
                accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
                results[system] = (result, drafts, accepted)
                engine.shutdown()
            plain, spec = results["plain"][0], results["spec"][0]
            assert plain.output_tokens == spec.output_tokens, "speculation must not change greedy outputs"
            _, drafts, accepted = results["spec"]
            row = {
                "workload": name,
                "concurrency": concurrency,
                "output_tokens": plain.output_tokens,
                "plain_tok_s": round(plain.output_tokens / plain.seconds, 1),
                "spec_tok_s": round(spec.output_tokens / spec.seconds, 1),
                "speedup": round(plain.seconds / spec.seconds, 3),
                "plain_tpot_p50_ms": round(time_per_output_token_p50_ms(plain), 1),
                "spec_tpot_p50_ms": round(time_per_output_token_p50_ms(spec), 1),
                "draft_tokens": drafts,
                "acceptance": round(accepted / drafts, 3) if drafts else 0.0,
            }
            rows.append(row)
            print(
                f"{name:>6} x{concurrency:<3} {row['output_tokens']:5d} tokens  plain {row['plain_tok_s']:7.1f} tok/s"
                f"  {speculative.method} {row['spec_tok_s']:7.1f} tok/s  speedup {row['speedup']:.3f}  TPOT p50"
                f" {row['plain_tpot_p50_ms']} -> {row['spec_tpot_p50_ms']} ms  drafts {drafts}, accepted"
                f" {row['acceptance']:.0%}",
                flush=True,
            )
    print(json.dumps({"benchmark": "speculative", "dtype": args.dtype, "config": args.speculative_config, "rows": rows}))


if __name__ == "__main__":
    main()

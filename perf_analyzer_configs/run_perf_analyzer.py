"""Run perf_analyzer against the ensemble and against `llm` directly at several concurrencies.

    .venv/bin/python perf_analyzer_configs/run_perf_analyzer.py --url 127.0.0.1:8001 --output runs/perf.csv

Needs a running tritonserver with model_repository/. Every run uses gRPC streaming (the llm model is
decoupled). The `llm` runs send the token ids of the same prompts (tokenized here with the model's
tokenizer), so the difference between the two rows is the cost of preprocess + postprocess.
Writes one CSV row per (target, input file, concurrency) with perf_analyzer's own figures.

Equivalent genai-perf lines (install genai-perf separately):
    genai-perf profile -m ensemble --backend tensorrtllm --service-kind triton --streaming \
        --url 127.0.0.1:8001 --synthetic-input-tokens-mean 128 --output-tokens-mean 64 --concurrency 8
    genai-perf profile -m ensemble --backend vllm --service-kind triton --streaming \
        --url 127.0.0.1:8001 --synthetic-input-tokens-mean 128 --output-tokens-mean 64 --concurrency 8
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


def llm_input_data(source: Path, tokenizer, target: Path) -> None:
    """The same requests as `source`, addressed to `llm`: token ids instead of text."""
    entries = json.loads(source.read_text())["data"]
    converted = []
    for entry in entries:
        ids = tokenizer(entry["text_input"][0]).input_ids
        converted.append(
            {
                "input_ids": {"content": ids, "shape": [len(ids)]},
                **{key: value for key, value in entry.items() if key != "text_input"},
            }
        )
    target.write_text(json.dumps({"data": converted}))


def run_one(
    url: str, model: str, input_data: Path, concurrency: int, window_requests: int, csv_path: Path
) -> dict:
    # Windows of a request count, not of time: one generation takes seconds on a CPU, so a 10 s window
    # holds two or three requests and never looks stable.
    command = [
        str(PERF_ANALYZER), "-m", model, "-u", url, "-i", "grpc", "--streaming",
        "--input-data", str(input_data), "--concurrency-range", str(concurrency),
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(max(window_requests, 2 * concurrency)),
        "--stability-percentage", "50", "--max-trials", "3", "-f", str(csv_path),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    with open(csv_path) as handle:
        row = next(csv.DictReader(handle))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--model-path", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--inputs", default="short_prompts_stream.json,long_prompt_stream.json")
    parser.add_argument("--window-requests", type=int, default=8, help="requests per measurement window")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "perf_analyzer.csv")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.inputs.split(","):
            source = HERE / name
            llm_data = Path(tmp) / f"llm_{name}"
            llm_input_data(source, tokenizer, llm_data)
            for target, data in (("ensemble", source), ("llm", llm_data)):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    row = run_one(
                        args.url,
                        target,
                        data,
                        concurrency,
                        args.window_requests,
                        Path(tmp) / "pa.csv",
                    )
                    rows.append({"target": target, "input": name, **row})
                    print(
                        f"{target:8s} {name:28s} c={concurrency:<3d} {row.get('Inferences/Second')} infer/s"
                    )
    with open(args.output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

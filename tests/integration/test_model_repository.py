"""The model repository in a real tritonserver: models READY, tokenization, generation, streaming,
cancellation, concurrency, errors, client payload conventions and metrics."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio_grpcclient
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.triton_requests import generate, make_inputs, scrape_metric, stream_outputs
from tests.servers import TritonServer

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Write one short sentence about the sea."}]
# Prompts whose continuations contain spaces, punctuation, emoji and CJK text.
DELTA_PROMPTS = [
    "List three fruits, separated by commas:",
    "Translate to Chinese: good morning. 中文:",
    "Reply with a party emoji and the word 'yay': 🎉",
    "The Eiffel Tower is located in",
]


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):
    return AutoTokenizer.from_pretrained(model_path)


def chat_prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)


def metrics_text(server: TritonServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return response.read().decode()


def test_every_model_is_ready(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    for model in ("preprocess", "llm", "postprocess", "ensemble"):
        assert client.is_model_ready(model), f"{model} is not READY"


def test_preprocess_matches_hf_tokenizer(triton_server: TritonServer, tokenizer) -> None:
    prompt = chat_prompt(tokenizer)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    result = client.infer("preprocess", make_inputs({"text_input": prompt, "add_special_tokens": False}))
    expected = tokenizer(prompt, add_special_tokens=False).input_ids
    assert result.as_numpy("input_ids").tolist() == expected


def test_greedy_ensemble_output_matches_transformers(
    triton_server: TritonServer, model_path: Path, tokenizer
) -> None:
    prompt = chat_prompt(tokenizer)
    result = generate(
        triton_server.grpc_url,
        {"text_input": prompt, "add_special_tokens": False, "max_tokens": 24, "temperature": 0.0},
    )
    assert result.error is None, result.error
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    input_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        expected = model.generate(input_ids, max_new_tokens=24, do_sample=False)[
            0, input_ids.shape[1] :
        ].tolist()
    # Like vLLM, the engine reports the EOS token among the output tokens (it counts as generated).
    assert result.token_ids == expected
    assert result.num_input_tokens == input_ids.shape[1]
    assert result.finish_reason in ("stop", "length")


@pytest.mark.parametrize("prompt", DELTA_PROMPTS)
def test_streamed_deltas_concatenate_to_the_full_text(triton_server: TritonServer, prompt: str) -> None:
    request = {"text_input": prompt, "max_tokens": 32, "temperature": 0.0}
    streamed = generate(triton_server.grpc_url, {**request, "stream": True})
    whole = generate(triton_server.grpc_url, {**request, "stream": False})
    assert streamed.error is None and whole.error is None
    assert len(whole.texts) == 1
    assert streamed.text.encode() == whole.text.encode()
    assert streamed.token_ids == whole.token_ids
    assert streamed.num_output_tokens == whole.num_output_tokens == len(whole.token_ids)


def test_stop_words_end_generation_without_leaking(triton_server: TritonServer) -> None:
    base = {"text_input": "Count: 1, 2, 3, 4, 5, 6,", "max_tokens": 32, "temperature": 0.0, "stream": True}
    free = generate(triton_server.grpc_url, base)
    assert free.error is None and " 9" in free.text, free.text
    stopped = generate(triton_server.grpc_url, {**base, "stop_words": [" 9"]})
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(" 9")]


def test_prompt_token_ids_are_used_as_given(triton_server: TritonServer, tokenizer) -> None:
    # "<|im_end|>" spelled as plain text: only token ids can carry that without it becoming a control token.
    plain = tokenizer.encode("Say <|im_end|> twice:", add_special_tokens=False, split_special_tokens=True)
    request = {"text_input": "ignored", "prompt_token_ids": plain, "max_tokens": 4, "temperature": 0.0}
    result = generate(triton_server.grpc_url, request)
    assert result.error is None and result.num_input_tokens == len(plain)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    tokenized = client.infer("preprocess", make_inputs({"text_input": "", "prompt_token_ids": plain}))
    assert tokenized.as_numpy("input_ids").tolist() == plain
    wrong = generate(triton_server.grpc_url, {**request, "prompt_token_ids": [len(tokenizer) + 5]})
    assert wrong.error is not None and "prompt_token_ids must be in" in str(wrong.error)


def test_prompt_over_max_model_len_fails_while_others_flow(triton_server: TritonServer) -> None:
    results = {}

    def normal() -> None:
        results["normal"] = generate(triton_server.grpc_url, {"text_input": "Hello", "max_tokens": 8})

    thread = threading.Thread(target=normal)
    thread.start()
    too_long = generate(triton_server.grpc_url, {"text_input": "word " * 9000, "max_tokens": 4})
    thread.join(timeout=120)
    assert too_long.error is not None
    assert "max_model_len" in str(too_long.error)
    assert results["normal"].error is None and results["normal"].num_output_tokens > 0


def test_unsupported_parameter_is_named_in_the_error(triton_server: TritonServer) -> None:
    request = {"text_input": "Hi", "sampling_parameters": {"use_beam_search": True}}
    result = generate(triton_server.grpc_url, request)
    assert result.error is not None and "use_beam_search" in str(result.error)


def test_genai_perf_tensorrtllm_payload_streams(triton_server: TritonServer) -> None:
    result = generate(
        triton_server.grpc_url,
        {"text_input": "Tell me a story.", "max_tokens": 16, "stream": True, "ignore_eos": True},
    )
    assert result.error is None
    assert result.num_output_tokens == 16 and len(result.texts) >= 2


def test_vllm_backend_additional_outputs(triton_server: TritonServer) -> None:
    """vllm_backend's flags: with return_num_output_tokens, num_output_tokens counts each response's tokens
    (as vllm_backend's does), return_cumulative_logprob adds the running sum of the tokens' logprobs (the
    TensorRT-LLM cum_log_probs), return_finish_reason makes finish_reason read "None" before the end (as
    vllm_backend's str(None); it always comes, "" before the end without the flag)."""
    request = {
        "text_input": "Tell me a story.",
        "stream": True,
        "sampling_parameters": {"max_tokens": 8, "ignore_eos": True, "temperature": 0.0},
        "return_finish_reason": True,
        "return_num_output_tokens": True,
        "return_cumulative_logprob": True,
        "return_log_probs": True,
    }
    responses = stream_outputs(triton_server.grpc_url, request, "ensemble")
    counts = [int(response["num_output_tokens"][0]) for response in responses]
    assert counts == [len(response["output_token_ids"]) for response in responses] and sum(counts) == 8
    running = list(itertools.accumulate(float(response["output_log_probs"].sum()) for response in responses))
    cumulative = [float(response["cumulative_logprob"][0]) for response in responses]
    assert cumulative == pytest.approx(running, abs=1e-4) and cumulative[-1] < 0
    assert cumulative == [float(response["cum_log_probs"][0]) for response in responses]
    assert [response["finish_reason"][0] for response in responses] == [b"None"] * (len(responses) - 1) + [b"length"]
    # return_cumulative_logprob alone is enough to get it.
    alone = {key: value for key, value in request.items() if key != "return_log_probs"}
    sums = [float(response["cumulative_logprob"][0]) for response in stream_outputs(triton_server.grpc_url, alone, "ensemble")]
    assert sums == pytest.approx(cumulative, abs=1e-4)
    # Without the flag, the sequence's tokens so far; no cumulative_logprob unless asked.
    plain = stream_outputs(triton_server.grpc_url, {**request, "return_num_output_tokens": False,
                                                    "return_cumulative_logprob": False}, "ensemble")  # fmt: skip
    assert int(plain[-1]["num_output_tokens"][0]) == 8 and all("cumulative_logprob" not in r for r in plain)
    unflagged = stream_outputs(triton_server.grpc_url, {**request, "return_finish_reason": False}, "ensemble")
    assert [r["finish_reason"][0] for r in unflagged] == [b""] * (len(unflagged) - 1) + [b"length"]


def test_genai_perf_vllm_payload_streams(triton_server: TritonServer) -> None:
    sampling = {"max_tokens": "16", "ignore_eos": "true", "temperature": 0.0}
    result = generate(
        triton_server.grpc_url,
        {
            "text_input": "Tell me a story.",
            "stream": True,
            "sampling_parameters": sampling,
            "exclude_input_in_output": True,
        },
    )
    assert result.error is None
    assert result.num_output_tokens == 16 and result.finish_reason == "length"


def test_outputs_with_nothing_to_say_are_left_out(triton_server: TritonServer) -> None:
    optional = {"sequence_index", "cum_log_probs", "output_log_probs", "top_log_probs", "prompt_log_probs"}
    story = {"text_input": "Tell me a story.", "max_tokens": 4, "stream": True, "ignore_eos": True}
    plain = generate(triton_server.grpc_url, story)
    assert plain.error is None and len(plain.output_names) >= 2
    assert all(names.isdisjoint(optional) and "text_output" in names for names in plain.output_names)
    with_logprobs = generate(triton_server.grpc_url, {**story, "return_log_probs": True})
    assert with_logprobs.error is None
    assert all(names & optional == {"cum_log_probs", "output_log_probs", "top_log_probs"}
               for names in with_logprobs.output_names)  # fmt: skip
    parallel = generate(
        triton_server.grpc_url, {**story, "sampling_parameters": {"n": 2, "temperature": 1.0}}
    )
    assert parallel.error is None
    assert all(names & optional == {"sequence_index"} for names in parallel.output_names)


def test_unchanged_outputs_come_only_on_a_sequences_first_and_last_responses(
    triton_server: TritonServer, tokenizer
) -> None:
    """The frontend's lean streams (return_unchanged_outputs=false) carry the same tokens and counts."""
    request = {
        "input_ids": tokenizer.encode("Tell me a story."),
        "max_tokens": 6,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    full = stream_outputs(triton_server.grpc_url, request, model="llm")
    lean = stream_outputs(triton_server.grpc_url, {**request, "return_unchanged_outputs": False}, model="llm")
    everything = {"request_id", "text_delta", "output_token_ids", "num_input_tokens", "num_output_tokens",
                  "num_cached_tokens", "finish_reason"}  # fmt: skip
    assert [set(response) for response in full] == [everything] * len(full)
    changing = {"text_delta", "output_token_ids"}
    assert len(lean) >= 3
    assert [set(response) for response in lean] == [everything] + [changing] * (len(lean) - 2) + [everything]

    def stream_text(responses: list[dict]) -> tuple[str, list[int]]:
        return (
            "".join(response["text_delta"][0].decode("utf-8") for response in responses),
            [int(token) for response in responses for token in response["output_token_ids"]],
        )

    assert stream_text(lean) == stream_text(full)
    # The count a lean stream leaves out between is the running sum of the tokens sent.
    assert int(lean[-1]["num_output_tokens"][0]) == int(full[-1]["num_output_tokens"][0]) == request["max_tokens"]
    assert lean[-1]["finish_reason"][0] == b"length"
    assert int(lean[0]["num_input_tokens"][0]) == len(request["input_ids"])


def test_a_stream_interval_groups_tokens_into_fewer_responses(triton_server: TritonServer, tokenizer) -> None:
    """vLLM's per-request stream_interval in sampling_parameters: the first response at once, then one per
    4 tokens, the same tokens and text as a token-by-token stream."""
    request = {
        "input_ids": tokenizer.encode("Tell me a story."),
        "max_tokens": 10,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    single = stream_outputs(triton_server.grpc_url, request, model="llm")
    grouped = stream_outputs(
        triton_server.grpc_url, {**request, "sampling_parameters": {"stream_interval": 4}}, model="llm"
    )
    assert [len(response["output_token_ids"]) for response in single] == [1] * 10
    assert [len(response["output_token_ids"]) for response in grouped] == [1, 4, 4, 1]
    assert [int(response["num_output_tokens"][0]) for response in grouped] == [1, 5, 9, 10]

    def text_and_tokens(responses: list[dict]) -> tuple[str, list[int]]:
        return (
            "".join(response["text_delta"][0].decode("utf-8") for response in responses),
            [int(token) for response in responses for token in response["output_token_ids"]],
        )

    assert text_and_tokens(grouped) == text_and_tokens(single)
    assert grouped[-1]["finish_reason"][0] == b"length"


def test_non_streamed_echo_prepends_the_prompt(triton_server: TritonServer) -> None:
    prompt = "The capital of France is"
    result = generate(
        triton_server.grpc_url, {"text_input": prompt, "max_tokens": 4, "exclude_input_in_output": False}
    )
    assert result.text.startswith(prompt) and len(result.text) > len(prompt)


def test_cancelled_stream_frees_the_engine(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    first = threading.Event()
    errors: list = []

    def callback(result, error) -> None:
        if error is not None:
            errors.append(error)
        else:
            first.set()

    client.start_stream(callback=callback)
    client.async_stream_infer(
        "ensemble",
        make_inputs(
            {"text_input": "Tell me a long story.", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        ),
    )
    assert first.wait(60), "no first response"
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        text = metrics_text(triton_server)
        if (
            scrape_metric(text, "llm_num_requests_running") == 0
            and scrape_metric(text, "llm_kv_cache_usage_ratio") == 0
        ):
            break
        time.sleep(0.1)
    text = metrics_text(triton_server)
    assert scrape_metric(text, "llm_num_requests_running") == 0
    assert scrape_metric(text, "llm_kv_cache_usage_ratio") == 0
    assert generate(triton_server.grpc_url, {"text_input": "Hi", "max_tokens": 4}).error is None


def test_aio_cancel_returns_cancelled(triton_server: TritonServer) -> None:
    async def run() -> None:
        client = aio_grpcclient.InferenceServerClient(triton_server.grpc_url)

        async def requests():
            yield {
                "model_name": "ensemble",
                "inputs": make_inputs(
                    {"text_input": "Story:", "max_tokens": 2000, "ignore_eos": True, "stream": True}
                ),
            }

        stream = client.stream_infer(requests())
        async for _result, error in stream:
            assert error is None
            break
        stream.cancel()
        await client.close()

    asyncio.run(run())
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if scrape_metric(metrics_text(triton_server), "llm_num_requests_running") == 0:
            break
        time.sleep(0.1)
    assert scrape_metric(metrics_text(triton_server), "llm_num_requests_running") == 0


def test_abort_by_the_clients_request_id(triton_server: TritonServer) -> None:
    """What the frontend sends when its HTTP client leaves: `abort_request_id` = the ensemble request id."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(
            "ensemble",
            make_inputs({"text_input": "Count:", "max_tokens": 2000, "ignore_eos": True, "stream": True}),
            request_id="client-chosen-id",
        )
        result, error = responses.get(timeout=60)
        assert error is None, error
        aborted = grpcclient.InferenceServerClient(triton_server.grpc_url)
        aborted.start_stream(callback=lambda result, error: None)
        aborted.async_stream_infer("llm", make_inputs({"abort_request_id": "client-chosen-id"}))
        aborted.stop_stream()
        reasons = []
        deadline = time.monotonic() + 30.0
        while not reasons and time.monotonic() < deadline:
            result, error = responses.get(timeout=30)
            assert error is None, error
            reasons = [reason for reason in result.as_numpy("finish_reason") if reason]
        assert reasons == [b"abort"]
    finally:
        client.stop_stream()


def test_32_concurrent_streams_complete(triton_server: TritonServer) -> None:
    async def one(client, index: int) -> int:
        async def requests():
            yield {
                "model_name": "ensemble",
                "inputs": make_inputs(
                    {"text_input": f"Number {index}:", "max_tokens": 8, "ignore_eos": True, "stream": True}
                ),
            }

        tokens = 0
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            tokens += len(result.as_numpy("output_token_ids"))
            # aio clients cannot ask for empty final responses: the last real one names its finish reason.
            if result.as_numpy("finish_reason")[0]:
                break
        return tokens

    async def run() -> list[int]:
        client = aio_grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(32))), timeout=300)
        finally:
            await client.close()

    assert asyncio.run(run()) == [8] * 32


def test_custom_metrics_move(triton_server: TritonServer) -> None:
    """Token counters follow the engine's totals (published every half second), latencies once a request."""
    names = ("llm_generation_tokens_total", "llm_prompt_tokens_total", "llm_request_time_per_output_token_seconds_count")
    before = {name: scrape_metric(metrics_text(triton_server), name) for name in names}
    result = generate(triton_server.grpc_url, {"text_input": "Hello", "max_tokens": 5, "ignore_eos": True})
    assert result.error is None
    expected = {names[0]: before[names[0]] + 5, names[1]: before[names[1]] + 1, names[2]: before[names[2]] + 1}
    deadline = time.monotonic() + 10.0
    while True:
        text = metrics_text(triton_server)
        if all(scrape_metric(text, name) >= expected[name] for name in names) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {name: scrape_metric(text, name) >= expected[name] for name in names} == dict.fromkeys(names, True)
    assert scrape_metric(text, "llm_time_to_first_token_seconds_count") >= 1
    assert "llm_kv_cache_usage_ratio" in text


def test_token_ids_are_int32_arrays(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    result = client.infer("preprocess", make_inputs({"text_input": "abc"}))
    assert result.as_numpy("input_ids").dtype == np.int32

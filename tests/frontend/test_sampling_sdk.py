"""Penalties, logit_bias, logprobs and n/best_of from the official OpenAI SDK to the engine and back,
plus the ensemble's TensorRT-LLM-named logprob tensors over raw Triton gRPC."""

from __future__ import annotations

import queue

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from frontend.protocol.chat import ChatMessage
from frontend.templating import ChatTemplater
from tests.frontend.conftest import MODEL_NAME
from tests.integration.triton_requests import make_inputs
from tests.servers import FrontendServer, TritonServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name a colour."}]
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


def test_chat_logprobs_stream_and_not(client: openai.OpenAI) -> None:
    request = {
        "model": MODEL_NAME,
        "messages": QUESTION,
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    reply = client.chat.completions.create(**request)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert reply.usage is not None and len(logprobs.content) == reply.usage.completion_tokens
    for entry in logprobs.content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one, and the top list is sorted.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
    if reply.choices[0].finish_reason == "length":
        assert "".join(entry.token for entry in logprobs.content) == reply.choices[0].message.content

    streamed = [
        entry
        for chunk in client.chat.completions.create(**request, stream=True)
        for choice in chunk.choices
        if choice.logprobs is not None and choice.logprobs.content
        for entry in choice.logprobs.content
    ]
    # Same tokens; logprobs equal up to the numerics of a prefix-cache hit.
    assert [e.token for e in streamed] == [e.token for e in logprobs.content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in logprobs.content], abs=1e-3)


def test_chat_n_choices_seeded_stream_equals_non_streamed(client: openai.OpenAI) -> None:
    request = {
        "model": MODEL_NAME,
        "messages": QUESTION,
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 7,
        "n": 3,
    }
    reply = client.chat.completions.create(**request)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    texts = [choice.message.content or "" for choice in reply.choices]
    assert len(set(texts)) > 1
    # The prompt counts once; every choice's tokens count.
    assert reply.usage is not None and 3 <= reply.usage.completion_tokens <= 18
    streamed = ["", "", ""]
    roles, finishes = set(), {}
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == {0, 1, 2} and sorted(finishes) == [0, 1, 2]
    assert streamed == texts


def test_completions_logprobs_with_echo(client: openai.OpenAI, templater: ChatTemplater) -> None:
    reply = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.token_logprobs is not None
    prompt_ids = templater.encode(PROMPT, True)
    assert len(logprobs.tokens) == len(prompt_ids) + 4
    assert (
        logprobs.token_logprobs[0] is None
        and logprobs.top_logprobs is not None
        and logprobs.top_logprobs[0] is None
    )
    assert all(value is not None and value <= 0 for value in logprobs.token_logprobs[1:])
    # OpenAI: up to logprobs + 1 entries, the chosen token always among them (echoed prompt tokens are often
    # outside the model's top 2).
    assert all(top is not None and 2 <= len(top) <= 3 for top in logprobs.top_logprobs[1:])
    assert all(
        top is not None and top[token] == value
        for token, value, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True)
    )
    assert any(top is not None and len(top) == 3 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == 0
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert choice.text.startswith(PROMPT) and "".join(logprobs.tokens).endswith(choice.text[len(PROMPT) :])

    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, stream=True
        )
    )
    streamed = [
        token
        for chunk in chunks
        for c in chunk.choices
        if c.logprobs and c.logprobs.tokens
        for token in c.logprobs.tokens
    ]
    assert streamed == logprobs.tokens[len(prompt_ids) :]


def test_prompt_logprobs_on_chat_and_completions(client: openai.OpenAI, templater: ChatTemplater) -> None:
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=2,
        temperature=0,
        extra_body={"prompt_logprobs": 2, "return_token_ids": True, "add_special_tokens": True},
    )
    extra = chat.model_extra or {}
    prompt_ids, entries = extra["prompt_token_ids"], extra["prompt_logprobs"]
    # add_special_tokens: SmolLM2's tokenizer adds none around the templated prompt.
    assert prompt_ids == templater.render([ChatMessage.model_validate(m) for m in QUESTION]).token_ids
    assert chat.usage is not None and len(entries) == len(prompt_ids) == chat.usage.prompt_tokens
    assert entries[0] is None
    for token, entry in zip(prompt_ids[1:], entries[1:], strict=True):
        # The prompt's token (JSON keys are strings), then the 2 most likely, ranked 1 and 2.
        assert list(entry)[0] == str(token) and 2 <= len(entry) <= 3
        mine = entry[str(token)]
        assert mine["decoded_token"] == templater.decode([token])
        assert sorted(item["rank"] for item in entry.values()) == sorted({1, 2, mine["rank"]})
        by_rank = sorted(entry.values(), key=lambda item: item["rank"])
        assert [item["logprob"] for item in by_rank] == sorted((item["logprob"] for item in by_rank), reverse=True)
        assert by_rank[0]["logprob"] <= 0
    assert any(entry[str(token)]["rank"] > 2 for token, entry in zip(prompt_ids[1:], entries[1:], strict=True))

    # The same prompt as token ids through completions: the same logprobs, on the choice; echo's
    # logprobs agree with them.
    completion = client.completions.create(
        model=MODEL_NAME,
        prompt=prompt_ids,
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=1,
        extra_body={"prompt_logprobs": 2},
    )
    choice = completion.choices[0]
    same = (choice.model_extra or {})["prompt_logprobs"]
    assert [None if e is None else list(e) for e in same] == [None if e is None else list(e) for e in entries]
    for token, mine, theirs in zip(prompt_ids[1:], same[1:], entries[1:], strict=True):
        assert mine[str(token)]["logprob"] == pytest.approx(theirs[str(token)]["logprob"], abs=1e-4)
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    echoed = choice.logprobs.token_logprobs[1 : len(prompt_ids)]
    assert echoed == pytest.approx([e[str(t)]["logprob"] for t, e in zip(prompt_ids[1:], same[1:], strict=True)])

    # Not streamed (vLLM's rule), unless no top tokens are asked.
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, max_tokens=2, stream=True, extra_body={"prompt_logprobs": 1}
        )
    streamed = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=2, stream=True, extra_body={"prompt_logprobs": 0}
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)


def test_chat_echo_returns_the_continued_assistant_prefix(client: openai.OpenAI) -> None:
    prefix = "The three primary colours are"
    request = {
        "model": MODEL_NAME,
        "messages": [*QUESTION, {"role": "assistant", "content": prefix}],
        "max_tokens": 6,
        "temperature": 0,
        "n": 2,
        "extra_body": {"echo": True, "continue_final_message": True, "add_generation_prompt": False},
    }
    reply = client.chat.completions.create(**request)
    plain = client.chat.completions.create(**{**request, "extra_body": {**request["extra_body"], "echo": False}})
    for echoed, alone in zip(reply.choices, plain.choices, strict=True):
        assert echoed.message.content == prefix + (alone.message.content or "")
    streamed = ["", ""]
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [choice.message.content for choice in reply.choices]
    # Only a last message with the answer's role is echoed.
    asked = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=3, temperature=0)
    echoed_question = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=3, temperature=0, extra_body={"echo": True}
    )
    assert echoed_question.choices[0].message.content == asked.choices[0].message.content


def test_logprob_tokens_as_token_ids(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )
    choice = chat.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    ids = (choice.model_extra or {})["token_ids"]
    assert [entry.token for entry in choice.logprobs.content] == [f"token_id:{token}" for token in ids]
    assert all(entry.bytes == list(entry.token.encode()) for entry in choice.logprobs.content)
    assert all(top.token.startswith("token_id:") for entry in choice.logprobs.content for top in entry.top_logprobs)
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1,
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    choice_c = completion.choices[0]
    logprobs = choice_c.logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    assert logprobs.tokens == [f"token_id:{token}" for token in (choice_c.model_extra or {})["token_ids"]]
    assert all(token in top for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True) if top)
    # Offsets still count the text's characters.
    assert logprobs.text_offset is not None and logprobs.text_offset[-1] < len(choice_c.text)


def test_documents_reach_the_chat_template(client: openai.OpenAI, templater: ChatTemplater) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=1,
        extra_body={
            "documents": [{"title": "Colours", "text": "Red is a colour."}],
            "chat_template": "{% for d in documents %}[{{ d.title }}: {{ d.text }}]{% endfor %}{{ messages[0].content }}",
            "return_token_ids": True,
        },
    )
    expected = templater.encode("[Colours: Red is a colour.]Name a colour.", add_special_tokens=False)
    assert (reply.model_extra or {})["prompt_token_ids"] == expected


def test_completions_n_best_of_and_batches(client: openai.OpenAI, templater: ChatTemplater) -> None:
    batch = client.completions.create(
        model=MODEL_NAME, prompt=[PROMPT, "Once upon a time"], max_tokens=3, temperature=1.0, seed=1, n=2
    )
    assert [choice.index for choice in batch.choices] == [0, 1, 2, 3]
    assert batch.usage is not None and batch.usage.completion_tokens == 12
    prompt_tokens = len(templater.encode(PROMPT, True)) + len(templater.encode("Once upon a time", True))
    assert batch.usage.prompt_tokens == prompt_tokens

    # Streamed, the n sequences share one lean Triton stream whose middle responses leave each sequence's
    # count out: the frontend keeps one per sequence.
    options = {"include_usage": True, "continuous_usage_stats": True}
    streamed = list(
        client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=1.0, seed=3, n=2, stream=True,
            stream_options=options, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 10
    running = [chunk.usage.completion_tokens for chunk in streamed if chunk.usage]
    assert running == sorted(running) and len(running) > 2

    best = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=1.0, seed=2, best_of=3
    )
    assert len(best.choices) == 1 and best.choices[0].index == 0
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, best_of=2, stream=True)
    assert caught.value.param == "best_of"


def test_bias_penalties_allowed_and_bad_words(client: openai.OpenAI, templater: ChatTemplater) -> None:
    forced = templater.encode(" blue", False)[0]
    biased = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={str(forced): 100}
    )
    assert biased.choices[0].text == " blue" * 3

    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    first_word = plain.choices[0].text.split()[0]
    banned = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        frequency_penalty=1.5,
        presence_penalty=1.0,
        extra_body={"bad_words": [first_word], "repetition_penalty": 1.3},
    )
    assert first_word not in banned.choices[0].text.split()

    allowed = [templater.encode(word, False)[0] for word in (" red", " green")]
    confined = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=4,
        temperature=1.0,
        extra_body={"allowed_token_ids": allowed},
    )
    assert set(templater.encode(confined.choices[0].text, False)) <= set(allowed)

    truncated = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=1, extra_body={"truncate_prompt_tokens": 3}
    )
    assert truncated.usage is not None and truncated.usage.prompt_tokens == 3

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=2, top_logprobs=2)
    assert caught.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, logit_bias={"999999": 1})
    assert caught.value.param == "logit_bias"


def test_stream_interval_sends_fewer_chunks_with_the_same_text_and_logprobs(client: openai.OpenAI) -> None:
    """vLLM's per-request stream_interval: chunks of up to 4 tokens after the first one."""
    request = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
        "max_tokens": 13,
        "temperature": 0,
        "logprobs": True,
        "stream": True,
    }

    def tokens_per_chunk(**extra: object) -> tuple[str, list[list[str]]]:
        text, groups = "", []
        for chunk in client.chat.completions.create(**request, **extra):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.logprobs is not None and choice.logprobs.content:
                    groups.append([entry.token for entry in choice.logprobs.content])
        return text, groups

    text, single = tokens_per_chunk()
    grouped_text, grouped = tokens_per_chunk(extra_body={"stream_interval": 4})
    assert grouped_text == text
    assert [token for group in grouped for token in group] == [token for group in single for token in group]
    assert len(single) == 13 and [len(group) for group in grouped] == [1, 4, 4, 4]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, extra_body={"stream_interval": 0})
    assert caught.value.param == "stream_interval"


def test_ensemble_returns_sequences_and_tensorrt_llm_logprobs(triton_server: TritonServer) -> None:
    """Non-streamed, n=2 through sampling_parameters, TensorRT-LLM's return_log_probs: one response per
    sequence (the last FINAL), each with its index, per-token and cumulative logprobs."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    values = {
        "text_input": PROMPT,
        "max_tokens": 3,
        "stream": False,
        "sampling_parameters": {"n": 2, "temperature": 1.0, "seed": 3},
    }
    inputs = make_inputs(values)
    flag = grpcclient.InferInput("return_log_probs", [1], "BOOL")
    flag.set_data_from_numpy(np.array([True]))
    try:
        client.async_stream_infer("ensemble", [*inputs, flag], enable_empty_final_response=True)
        seen = {}
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            if result.as_numpy("text_output") is not None:
                index = int(result.as_numpy("sequence_index")[0])
                token_ids = result.as_numpy("output_token_ids").tolist()
                per_token = result.as_numpy("output_log_probs").tolist()
                assert len(token_ids) == len(per_token) == 3 and all(value <= 0 for value in per_token)
                assert float(result.as_numpy("cum_log_probs")[0]) == pytest.approx(sum(per_token), abs=1e-4)
                seen[index] = result.as_numpy("finish_reason")[0]
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    assert seen == {0: b"length", 1: b"length"}

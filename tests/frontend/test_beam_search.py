"""vLLM's beam search (`use_beam_search`) through the official OpenAI SDK against the real servers, checked
against the same search driven by Hugging Face transformers' logits."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from frontend.errors import APIError
from frontend.protocol.chat import ChatCompletionRequest
from frontend.serving.beam_search import Beam, beam_search_settings
from frontend.serving.engine_params import engine_parameters
from frontend.templating import ChatTemplater
from tests.frontend.conftest import MODEL_NAME
from tests.integration.triton_requests import scrape_metric
from tests.servers import FrontendServer, TritonServer

PROMPT = "The best way to learn a new language is"


@dataclass
class ReferenceBeam:
    token_ids: list[int]
    cumulative_logprob: float
    ended: bool


def reference_beam_search(
    model: PreTrainedModel,
    prompt: list[int],
    width: int,
    max_tokens: int,
    length_penalty: float,
    eos: int,
    ignore_eos: bool = False,
) -> list[ReferenceBeam]:
    """vLLM's algorithm over transformers' full forward passes (no cache): each step every live beam's 2n
    likeliest tokens, the n best continuations kept, EOS set aside; the n best by the length-penalised score
    (a final EOS left out of the length)."""
    live = [ReferenceBeam([], 0.0, False)]
    ended: list[ReferenceBeam] = []
    for _ in range(max_tokens):
        candidates = []
        for beam in live:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + beam.token_ids])).logits[0, -1]
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            values, tokens = torch.topk(logprobs, 2 * width)
            for value, token in zip(values.tolist(), tokens.tolist(), strict=True):
                stops = token == eos and not ignore_eos
                grown = ReferenceBeam([*beam.token_ids, token], beam.cumulative_logprob + value, stops)
                (ended if grown.ended else candidates).append(grown)
        live = sorted(candidates, key=lambda beam: beam.cumulative_logprob, reverse=True)[:width]

    def score(beam: ReferenceBeam) -> float:
        length = len(prompt) + len(beam.token_ids) - (beam.token_ids[-1] == eos)
        return beam.cumulative_logprob / length**length_penalty

    return sorted(ended + live, key=score, reverse=True)[:width]


@pytest.fixture(scope="module")
def hf_model(model_path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


@pytest.mark.slow
def test_completion_beams_match_the_search_over_transformers(
    client: openai.OpenAI, hf_model: PreTrainedModel, templater: ChatTemplater
) -> None:
    prompt = templater.encode(PROMPT, add_special_tokens=True)
    reply = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        n=3,
        max_tokens=6,
        logprobs=2,
        extra_body={"use_beam_search": True, "ignore_eos": True, "return_token_ids": True},
    )
    eos = templater.tokenizer.eos_token_id
    expected = reference_beam_search(hf_model, prompt, 3, 6, 1.0, eos, ignore_eos=True)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    for choice, beam in zip(reply.choices, expected, strict=True):
        token_ids = choice.model_extra["token_ids"] if choice.model_extra else None
        assert token_ids == beam.token_ids
        assert choice.text == templater.tokenizer.decode(beam.token_ids, skip_special_tokens=True)
        assert choice.finish_reason == "length"
        assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
        assert sum(choice.logprobs.token_logprobs) == pytest.approx(beam.cumulative_logprob, abs=1e-3)
        assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == 3 * 6
    # Distinct hypotheses, best first.
    assert len({choice.text for choice in reply.choices}) == 3


@pytest.mark.slow
def test_echo_carries_the_prompt_and_its_logprobs(client: openai.OpenAI, templater: ChatTemplater) -> None:
    prompt = templater.encode(PROMPT, add_special_tokens=True)
    reply = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        n=2,
        max_tokens=3,
        logprobs=1,
        echo=True,
        extra_body={"use_beam_search": True, "ignore_eos": True},
    )
    for choice in reply.choices:
        assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
        assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
        assert len(choice.logprobs.token_logprobs) == len(prompt) + 3
        # Nothing predicts the first prompt token; every other has its logprob.
        assert choice.logprobs.token_logprobs[0] is None
        assert all(value is not None and value <= 0 for value in choice.logprobs.token_logprobs[1:])


@pytest.mark.slow
def test_chat_beams_end_on_eos_and_stream_whole(
    client: openai.OpenAI, hf_model: PreTrainedModel, templater: ChatTemplater
) -> None:
    messages = [{"role": "user", "content": "Say yes or no."}]
    request = {
        "model": MODEL_NAME,
        "messages": messages,
        "n": 2,
        "max_tokens": 12,
        "extra_body": {"use_beam_search": True, "length_penalty": 0.5, "return_token_ids": True},
    }
    reply = client.chat.completions.create(**request)  # type: ignore[call-overload]
    prompt = templater.render([ChatCompletionRequest(model=MODEL_NAME, messages=messages).messages[0]]).token_ids
    eos = templater.tokenizer.eos_token_id
    expected = reference_beam_search(hf_model, prompt, 2, 12, 0.5, eos)
    assert any(beam.ended for beam in expected), "the question should let some beam end on EOS"
    for choice, beam in zip(reply.choices, expected, strict=True):
        assert choice.model_extra is not None and choice.model_extra["token_ids"] == beam.token_ids
        assert choice.finish_reason == ("stop" if beam.ended else "length")
        shown = beam.token_ids[:-1] if beam.ended else beam.token_ids
        assert choice.message.content == templater.tokenizer.decode(shown, skip_special_tokens=True)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(len(beam.token_ids) for beam in expected)

    # Streamed: each beam's text arrives whole, in one delta, then its finish reason.
    contents: dict[int, list[str]] = {}
    finishes: dict[int, str] = {}
    for chunk in client.chat.completions.create(**request, stream=True):  # type: ignore[call-overload]
        for choice in chunk.choices:
            if choice.delta.content:
                contents.setdefault(choice.index, []).append(choice.delta.content)
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert contents == {choice.index: [choice.message.content] for choice in reply.choices}
    assert finishes == {choice.index: choice.finish_reason for choice in reply.choices}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_p": 0.5}, "top_p"),
        ({"n": 11}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop": ["."]}, "stop"),
        ({"best_of": 4}, "best_of"),
    ],
)
def test_what_a_search_would_ignore_is_refused_by_name(
    client: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=4, extra_body={"use_beam_search": True, **fields}
        )
    assert refused.value.body is not None and refused.value.body["param"] == param  # type: ignore[index]


def engine_requests_done(triton_server: TritonServer) -> float:
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        return scrape_metric(response.read().decode(), "nv_inference_request_success")


@pytest.mark.slow
def test_a_client_that_leaves_ends_the_search(frontend_server: FrontendServer, triton_server: TritonServer) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "n": 4,
        "max_tokens": 2000,
        "use_beam_search": True,
        "ignore_eos": True,
    }
    started = engine_requests_done(triton_server)
    left = frontend_server.post_and_leave("/completions", body, 3.0)
    assert left, "a 2,000-step search should still be running when the client gives up"
    time.sleep(1.0)  # the steps in flight end, cancelled or not
    ended = engine_requests_done(triton_server)
    assert ended - started >= 8, "the search should have run several steps of 4 beams"
    time.sleep(2.0)
    assert engine_requests_done(triton_server) == ended, "no step may follow the client's leaving"


def test_beam_score_leaves_the_stop_token_out_of_the_length() -> None:
    ended = Beam([5, 7, 4], -3.0, finish_reason="stop")
    running = Beam([5, 7, 9], -3.0)
    assert ended.score(3, 1.0, eos_token_id=2) == pytest.approx(-3.0 / 5)
    assert running.score(3, 1.0, eos_token_id=2) == pytest.approx(-3.0 / 6)
    assert running.score(3, 0.0, eos_token_id=2) == pytest.approx(-3.0)
    # A final EOS a beam ran through (ignore_eos) does not count either, as vLLM scores it.
    assert Beam([5, 7, 2], -3.0).score(3, 1.0, eos_token_id=2) == pytest.approx(-3.0 / 5)


def test_settings_take_the_context_room_when_max_tokens_is_open() -> None:
    request = ChatCompletionRequest(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], use_beam_search=True, n=4
    )
    params = engine_parameters(request, {})
    settings = beam_search_settings(params, None, 100)
    assert (settings.width, settings.max_tokens, settings.length_penalty) == (4, 100, 1.0)
    assert beam_search_settings(params, 500, 100).max_tokens == 100
    with pytest.raises(APIError) as refused:
        beam_search_settings(params, None, None)
    assert refused.value.param == "max_tokens"

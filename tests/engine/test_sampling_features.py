"""Penalties, logit_bias, allowed/bad tokens, logprobs, truncation and n/best_of.

The sampler is checked against straightforward per-row torch references on fixed logits; the engine
on SmolLM2 (greedy, so outcomes are exact) and its logprobs against Hugging Face transformers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from engine import LLMEngine, RequestOutput, SamplingParams
from engine.request import Request
from engine.sampler import Sampler, apply_constraints, gather_logprobs
from engine.sampling_batch import build_sampling_batch, token_logprobs

VOCAB = 10
CPU = torch.device("cpu")


def fake_request(prompt: list[int], output: list[int], **params: object) -> Request:
    request = Request("r", prompt, SamplingParams(**params), priority=0, arrival_seq=0, arrival_time=0.0)
    request.all_token_ids.extend(output)
    return request


def reference_penalties(
    logits: torch.Tensor,
    prompt: list[int],
    output: list[int],
    presence: float,
    frequency: float,
    repetition: float,
) -> torch.Tensor:
    """One row, token by token, as vLLM documents the three penalties."""
    out = logits.clone()
    for token in range(len(out)):
        if token in prompt or token in output:
            out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
        count = output.count(token)
        out[token] -= frequency * count + (presence if count else 0.0)
    return out


def test_penalties_bias_allowed_and_bad_words_match_references() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3)) * 3
    requests = [
        fake_request(
            [1, 2, 2], [3, 3, 4], presence_penalty=0.5, frequency_penalty=0.7, repetition_penalty=1.3
        ),
        fake_request([5], [6], logit_bias={"7": 5.0, 1: -2.0}, repetition_penalty=0.8),
        fake_request([0], [8, 9], allowed_token_ids=[2, 4, 9]),
        fake_request([0], [4, 5]),
    ]
    # Request 3 bans token 6 after "4 5" (a three-token word) and token 1 always (a one-token word).
    requests[3].bad_words_token_ids = ((4, 5, 6), (1,), (5, 5, 2))
    batch = build_sampling_batch(requests, VOCAB, lambda tensor: tensor)
    constrained = apply_constraints(logits.clone(), batch)

    expected = logits.clone()
    expected[0] = reference_penalties(logits[0], [1, 2, 2], [3, 3, 4], 0.5, 0.7, 1.3)
    biased = logits[1].clone()
    biased[7] += 5.0
    biased[1] -= 2.0
    expected[1] = reference_penalties(biased, [5], [6], 0.0, 0.0, 0.8)
    expected[2] = torch.full((VOCAB,), float("-inf"))
    expected[2, [2, 4, 9]] = logits[2, [2, 4, 9]]
    expected[3, [6, 1]] = float("-inf")
    assert torch.allclose(constrained, expected), (constrained, expected)
    assert batch.penalties is not None and batch.penalties.rows.tolist() == [0, 1]


def test_penalties_of_many_rows_with_repeats_and_overlaps_match_the_reference() -> None:
    """Rows of different prompt and output lengths (so padded tables), ids repeated within and across
    prompt and output, a row without penalties between penalised ones."""
    generator = torch.Generator().manual_seed(8)
    vocab = 40
    logits = torch.randn(6, vocab, generator=generator) * 3
    requests = []
    for row in range(6):
        prompt = torch.randint(0, vocab, (3 + 5 * row,), generator=generator).tolist()
        output = torch.randint(0, vocab, (2 * row,), generator=generator).tolist()
        penalties = {} if row == 2 else {"presence_penalty": 0.1 * row, "frequency_penalty": 0.3, "repetition_penalty": 1.2}
        requests.append(fake_request(prompt, output, **penalties))
    batch = build_sampling_batch(requests, vocab, lambda tensor: tensor)
    constrained = apply_constraints(logits.clone(), batch)
    for row, request in enumerate(requests):
        params = request.params
        expected = reference_penalties(
            logits[row], request.prompt_token_ids, request.output_token_ids,
            params.presence_penalty, params.frequency_penalty, params.repetition_penalty,
        )  # fmt: skip
        assert torch.allclose(constrained[row], expected), row


def test_raw_logprobs_ignore_temperature_and_filters() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(5))
    requests = [
        fake_request([1], [], temperature=0.3, top_k=2, logit_bias={0: 50.0}),
        fake_request([1], [], temperature=0.0),
        fake_request([1], [], temperature=0.0, repetition_penalty=2.0),
    ]
    requests[0].num_logprobs, requests[2].num_logprobs = 3, 0
    batch = build_sampling_batch(requests, VOCAB, lambda tensor: tensor)
    result = Sampler(seed=0, device=CPU)(logits.clone(), batch)
    entries = token_logprobs(requests, batch, result)
    raw = logits.log_softmax(dim=-1)
    assert result.token_ids[0] == 0  # the bias wins the draw ...
    first = entries[0]
    assert first is not None and first.token_id == 0
    assert first.logprob == pytest.approx(float(raw[0, 0]), abs=1e-5)  # ... but not the logprob
    top = raw[0].topk(3)
    assert [token for token, _ in first.top] == top.indices.tolist()
    assert [value for _, value in first.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert entries[1] is None
    assert entries[2] is not None and entries[2].top == []
    ids, values = gather_logprobs(raw, torch.tensor([4, 4, 4]), 0)
    assert ids.tolist() == [[4]] * 3 and torch.allclose(values[:, 0], raw[:, 4])


# -- the engine on SmolLM2 ------------------------------------------------------------------------


def run(
    engine: LLMEngine, request_id: str, prompt: list[int], params: SamplingParams
) -> dict[int, list[RequestOutput]]:
    """Add one request and step until its last output; outputs grouped by sequence index."""
    engine.add_request(request_id, prompt, params)
    by_index: dict[int, list[RequestOutput]] = defaultdict(list)
    finished = False
    while not finished:
        for output in engine.step():
            assert output.request_id == request_id
            by_index[output.index].append(output)
            finished = output.finished
    return dict(by_index)


def tokens(outputs: list[RequestOutput]) -> list[int]:
    return [token for output in outputs for token in output.new_token_ids]


def greedy(**overrides: object) -> SamplingParams:
    settings: dict = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
    settings.update(overrides)
    return SamplingParams(**settings)


@pytest.fixture(scope="module")
def prompt(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer.encode("The cat sat on the mat. The cat sat on the mat. The cat sat on the")


def test_engine_penalties_bias_allowed_bad_words(engine: LLMEngine, prompt: list[int], tokenizer) -> None:
    plain = tokens(run(engine, "plain", prompt, greedy())[0])
    assert len(set(plain)) < len(plain)  # this prompt makes greedy SmolLM2 repeat itself

    no_repeat = tokens(run(engine, "repetition", prompt, greedy(repetition_penalty=1e4))[0])
    assert len(set(no_repeat)) == len(no_repeat) and not set(no_repeat) & set(prompt)

    forced = tokenizer.encode(" banana", add_special_tokens=False)[0]
    assert (
        tokens(run(engine, "bias", prompt, greedy(max_tokens=4, logit_bias={forced: 100.0}))[0])
        == [forced] * 4
    )

    allowed = [forced, plain[0], 13]
    confined = tokens(run(engine, "allowed", prompt, greedy(allowed_token_ids=allowed))[0])
    assert set(confined) <= set(allowed)

    word = tokenizer.decode(plain[:2]).strip()
    banned = tokens(run(engine, "bad", prompt, greedy(bad_words=[word]))[0])
    assert banned[0] != plain[0] or banned[1] != plain[1]
    for sequence in engine._bad_words_token_ids([word]):
        assert all(banned[i : i + len(sequence)] != list(sequence) for i in range(len(banned)))


def test_truncate_prompt_tokens_keeps_the_tail(engine: LLMEngine, prompt: list[int]) -> None:
    truncated = run(engine, "truncated", prompt, greedy(max_tokens=4, truncate_prompt_tokens=6))[0]
    assert truncated[0].num_prompt_tokens == 6
    assert tokens(truncated) == tokens(run(engine, "tail", prompt[-6:], greedy(max_tokens=4))[0])


def test_logprobs_match_transformers(engine: LLMEngine, prompt: list[int], model_dir: Path) -> None:
    outputs = run(engine, "logprobs", prompt, greedy(max_tokens=5, logprobs=4, prompt_logprobs=2))[0]
    generated = tokens(outputs)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + generated])).logits[0]
    expected = logits.log_softmax(dim=-1)

    entries = [entry for output in outputs for entry in output.logprobs or []]
    assert [entry.token_id for entry in entries] == generated
    for step, entry in enumerate(entries):
        row = expected[len(prompt) - 1 + step]
        assert entry.logprob == pytest.approx(float(row[entry.token_id]), abs=1e-3)
        assert [token for token, _ in entry.top] == row.topk(4).indices.tolist()
    assert outputs[-1].cumulative_logprob == pytest.approx(sum(entry.logprob for entry in entries), abs=1e-4)

    prompt_entries = outputs[0].prompt_logprobs
    assert prompt_entries is not None and len(prompt_entries) == len(prompt) and prompt_entries[0] is None
    for position, entry in enumerate(prompt_entries[1:], start=1):
        assert entry is not None and entry.token_id == prompt[position]
        row = expected[position - 1]
        assert entry.logprob == pytest.approx(float(row[prompt[position]]), abs=1e-3)
        assert len(entry.top) == 2
        # Its rank in the vocabulary, up to tokens within the numerics of the reference.
        assert entry.rank is not None
        assert int((row > entry.logprob + 1e-3).sum()) + 1 <= entry.rank <= int((row > entry.logprob - 1e-3).sum())
    assert any(entry is not None and entry.rank is not None and entry.rank > 3 for entry in prompt_entries)
    # n > 1: every sequence carries the prompt logprobs, computed once.
    pair = run(engine, "pair", prompt, greedy(max_tokens=2, n=2, prompt_logprobs=2))
    assert pair[0][0].prompt_logprobs == pair[1][0].prompt_logprobs
    pair_entries = pair[0][0].prompt_logprobs
    assert pair_entries is not None and [e and e.token_id for e in pair_entries] == [
        e and e.token_id for e in prompt_entries
    ]
    assert [e.logprob for e in pair_entries[1:] if e] == pytest.approx(
        [e.logprob for e in prompt_entries[1:] if e], abs=1e-4
    )
    # No logprobs asked: none computed.
    assert run(engine, "none", prompt, greedy(max_tokens=2))[0][-1].cumulative_logprob is None


def test_n_sequences_share_one_prefill(engine: LLMEngine, tokenizer) -> None:
    prompt = tokenizer.encode("Four friends each wrote a different short story about a dragon. " * 4)
    block = engine.block_manager.block_size
    before = engine.stats()
    params = SamplingParams(n=4, temperature=1.0, seed=11, max_tokens=6, ignore_eos=True)
    outputs = run(engine, "four", prompt, params)
    after = engine.stats()
    assert sorted(outputs) == [0, 1, 2, 3]
    assert all(sum(o.finish_reason is not None for o in outputs[i]) == 1 for i in outputs)
    assert len({tuple(tokens(outputs[i])) for i in outputs}) > 1
    # Sequences 1..3 found every full prompt block of sequence 0 in the prefix cache.
    full_blocks = (len(prompt) - 1) // block
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == 3 * full_blocks * block
    assert after.prompt_tokens_total - before.prompt_tokens_total == len(prompt)
    # Reproducible: the same seed gives the same four sequences.
    again = run(engine, "four-again", prompt, params)
    assert [tokens(again[i]) for i in range(4)] == [tokens(outputs[i]) for i in range(4)]


def test_best_of_returns_the_most_likely(engine: LLMEngine, prompt: list[int]) -> None:
    params = SamplingParams(n=2, best_of=4, temperature=1.2, seed=5, max_tokens=5, ignore_eos=True)
    outputs = run(engine, "best", prompt, params)
    assert sorted(outputs) == [0, 1] and all(len(outputs[i]) == 1 for i in outputs)
    chosen = [outputs[i][0].cumulative_logprob for i in range(2)]
    assert chosen[0] is not None and chosen[1] is not None and chosen[0] >= chosen[1]
    # The four candidates are the seeds 5..8 of n=4 with the same settings; the best two were kept.
    every = run(
        engine,
        "every",
        prompt,
        SamplingParams(n=4, temperature=1.2, seed=5, max_tokens=5, ignore_eos=True, logprobs=0),
    )
    scores = sorted((every[i][-1].cumulative_logprob or 0.0 for i in range(4)), reverse=True)
    assert chosen == pytest.approx(scores[:2], abs=1e-5)


def test_abort_ends_every_sequence(engine: LLMEngine, prompt: list[int]) -> None:
    engine.add_request("to-abort", prompt, SamplingParams(n=3, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    engine.abort_request("to-abort")
    outputs = engine.step()
    assert sorted(o.index for o in outputs) == [0, 1, 2]
    assert all(o.finish_reason == "abort" for o in outputs) and [o.finished for o in outputs][-1]
    assert not engine.has_unfinished_requests()
    assert engine.stats().num_running == 0 and engine.stats().num_waiting == 0
    # Aborted before the other sequences were scheduled.
    engine.add_request("early", prompt, SamplingParams(n=2, best_of=3, max_tokens=5))
    engine.abort_request("early")
    outputs = engine.step()
    assert [(o.index, o.finish_reason, o.finished) for o in outputs] == [
        (0, "abort", False),
        (1, "abort", True),
    ]
    assert not engine.has_unfinished_requests()


def test_a_greedy_rows_filters_do_not_reach_the_sampled_rows() -> None:
    """A greedy request with a top_k past every sampled row's once failed the step: the sampler gathers as
    many candidates as the largest sampled top_k, and looked up the greedy row's k-th among them."""
    vocab = 2000
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(6))
    requests = [
        fake_request([1], [], temperature=0.0, top_k=1000, top_p=0.5, min_p=0.3),
        fake_request([1], [], temperature=0.8, top_k=20, seed=1),
        fake_request([1], [], temperature=0.8, top_p=0.9, seed=2),
    ]
    batch = build_sampling_batch(requests, vocab, lambda tensor: tensor)
    tokens = Sampler(seed=0, device=CPU)(logits.clone(), batch).token_ids
    assert int(tokens[0]) == int(logits[0].argmax())
    assert int(tokens[1]) in logits[1].topk(20).indices.tolist()

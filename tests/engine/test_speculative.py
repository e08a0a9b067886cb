"""N-gram speculative decoding: its configuration, proposer and verification, and an engine that speculates
yielding exactly the tokens of one that does not when greedy (against Hugging Face's and a plain engine's,
beside requests that do not speculate, with stops inside accepted drafts, preemption, prefix caching), and
tokens of the same distribution when sampling."""

from __future__ import annotations

import random

import pytest
import torch

from engine import LLMEngine, SamplingParams, SpeculativeConfig, TokenLogprobs
from engine.pooling import PoolingParams
from engine.request import Request
from engine.speculative import NgramProposer, accepted_tokens, can_speculate
from engine.structured_output.params import StructuredOutputsParams
from tests.engine.conftest import EngineFactory, Reference

SPECULATIVE = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4)
# Prompts whose greedy continuations repeat what came before, so that drafts are proposed and accepted.
REPETITIVE_TEXTS = [
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Repeat after me three times: the quick brown fox jumps over the lazy dog. the quick brown fox",
    "def fibonacci(n):",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def speculating(make_engine: EngineFactory) -> LLMEngine:
    return make_engine(kv_cache_memory=64 << 20, speculative_config=SPECULATIVE)


def token_ids(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
    return [result.token_ids for result in engine.generate(prompts, params)]


# -- configuration ---------------------------------------------------------------------------------------


def test_the_json_form_follows_vllms_defaults() -> None:
    both = SpeculativeConfig.from_json('{"method": "ngram", "num_speculative_tokens": 3}')
    assert (both.num_speculative_tokens, both.prompt_lookup_min, both.prompt_lookup_max) == (3, 5, 5)
    only_max = SpeculativeConfig.from_json('{"num_speculative_tokens": 2, "prompt_lookup_max": 4}')
    assert (only_max.prompt_lookup_min, only_max.prompt_lookup_max) == (4, 4)
    only_min = SpeculativeConfig.from_json('{"num_speculative_tokens": 2, "prompt_lookup_min": 2}')
    assert (only_min.prompt_lookup_min, only_min.prompt_lookup_max) == (2, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"method": "ngram"}', "needs num_speculative_tokens"),
        ('{"method": "eagle", "num_speculative_tokens": 2}', "'eagle' is not supported"),
        ('{"num_speculative_tokens": 0}', "num_speculative_tokens must be >= 1"),
        ('{"num_speculative_tokens": "4"}', "must be an integer"),
        ('{"num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}', "prompt_lookup_min <="),
        ('{"num_speculative_tokens": 2, "prompt_lookup_min": 0, "prompt_lookup_max": 2}', "1 <= prompt_lookup_min"),
        ('{"num_speculative_tokens": 2, "quantization": "fp8"}', "keys not supported: ['quantization']"),
    ],
)
def test_bad_configurations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SpeculativeConfig.from_json(text)


# -- proposer and verification ---------------------------------------------------------------------------


def test_the_proposer_continues_the_latest_earlier_occurrence_of_the_longest_ngram() -> None:
    proposer = NgramProposer(SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=3))
    # "7 8" occurs twice before the end; the latest one is followed by 1 2.
    assert proposer.propose([7, 8, 9, 9, 7, 8, 1, 2, 5, 7, 8], 10) == [1, 2, 5]
    # The 3-gram "1 2 3" beats the 1-gram "3" whose latest occurrence is followed by something else.
    assert proposer.propose([1, 2, 3, 4, 4, 3, 6, 1, 2, 3], 10) == [4, 4, 3]
    # Continuations stop at the end of the sequence and at max_drafts.
    assert proposer.propose([5, 6, 5], 10) == [6, 5]
    assert proposer.propose([1, 2, 3, 1, 2, 3, 1, 2], 1) == [3]
    assert proposer.propose([1, 2, 3, 1, 2, 3, 1, 2], 0) == []


def test_the_proposer_proposes_nothing_without_a_recurring_ngram() -> None:
    proposer = NgramProposer(SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=3))
    # "3" recurs but no 2-gram does; the suffix's own occurrence never counts.
    assert proposer.propose([1, 3, 4, 2, 3], 10) == []
    assert proposer.propose([4, 4], 10) == []
    assert proposer.propose([4], 10) == []


def test_the_proposer_agrees_with_the_definition_on_random_sequences() -> None:
    """Brute force: for n from the longest down, the latest earlier window equal to the last n tokens."""
    config = SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=4)
    proposer = NgramProposer(config)

    def by_definition(tokens: list[int]) -> list[int]:
        for n in range(min(config.prompt_lookup_max, len(tokens) - 1), config.prompt_lookup_min - 1, -1):
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start : start + n] == tokens[-n:]:
                    return tokens[start + n : start + n + 3]
        return []

    rng = random.Random(0)
    for _ in range(2000):
        tokens = [rng.randrange(rng.choice([2, 4, 16])) for _ in range(rng.randrange(1, 40))]
        assert proposer.propose(tokens, 10) == by_definition(tokens), tokens


def test_verification_keeps_drafts_up_to_the_first_disagreement_then_the_models_token() -> None:
    assert accepted_tokens([], [7]) == [7]
    assert accepted_tokens([1, 2, 3], [1, 2, 3, 4]) == [1, 2, 3, 4]
    assert accepted_tokens([1, 2, 3], [1, 9, 3, 4]) == [1, 9]
    assert accepted_tokens([1, 2, 3], [8, 2, 3, 4]) == [8]
    with pytest.raises(AssertionError, match="2 drafts need 3 targets, got 2"):
        accepted_tokens([1, 2], [1, 2])


def speculating_request(params: SamplingParams, **fields: object) -> Request:
    return Request("r", [1, 2, 3], params, priority=0, arrival_seq=0, arrival_time=0.0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05},
        {"temperature": 0.7, "logit_bias": {5: 1.0}, "allowed_token_ids": [1, 2, 5]},
        {"temperature": 0.0, "logprobs": 2},
    ],
)
def test_requests_whose_positions_sample_alike_speculate(settings: dict) -> None:
    params = SamplingParams(max_tokens=8, **settings)
    assert can_speculate(speculating_request(params, num_logprobs=params.logprobs))


@pytest.mark.parametrize(
    ("settings", "fields"),
    [
        ({"presence_penalty": 0.5}, {}),
        ({"frequency_penalty": 0.5}, {}),
        ({"repetition_penalty": 1.2}, {}),
        ({"min_tokens": 3}, {}),
        ({"seed": 7}, {"generator": torch.Generator().manual_seed(7)}),
        ({"bad_words": ["x"]}, {"bad_words_token_ids": ((5,),)}),
        ({"structured_outputs": StructuredOutputsParams(choice=["a", "b"])}, {}),
        ({"n": 2}, {"parent_id": "parent"}),
        ({}, {"pooling": PoolingParams()}),
    ],
)
def test_requests_whose_positions_depend_on_each_other_do_not(settings: dict, fields: dict) -> None:
    assert not can_speculate(speculating_request(SamplingParams(max_tokens=8, **settings), **fields))


# -- the engine ------------------------------------------------------------------------------------------


def test_greedy_outputs_match_hugging_face(speculating: LLMEngine, reference: Reference) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in reference.max_tokens]
    assert token_ids(speculating, reference.prompts, params) == reference.outputs


def test_repetitive_prompts_accept_drafts_and_keep_the_outputs(engine: LLMEngine, speculating: LLMEngine) -> None:
    prompts = [speculating.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    before = speculating.stats()
    one_by_one = [token_ids(speculating, [prompt], GREEDY)[0] for prompt in prompts]
    after = speculating.stats()
    assert one_by_one == token_ids(engine, prompts, GREEDY)
    assert token_ids(speculating, prompts, GREEDY) == one_by_one
    drafts = after.spec_draft_tokens_total - before.spec_draft_tokens_total
    accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
    assert 0 < accepted <= drafts
    # Every accepted draft is a token the step did not need a forward of its own for.
    assert after.generation_tokens_total - before.generation_tokens_total == 3 * GREEDY.max_tokens


def test_sampled_and_constrained_requests_run_beside_speculating_ones(
    engine: LLMEngine, speculating: LLMEngine
) -> None:
    prompts = [speculating.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    params = [
        GREEDY,
        SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, logprobs=2, max_tokens=30, ignore_eos=True),
    ]
    expected = engine.generate(prompts, params)
    got = speculating.generate(prompts, params)
    assert [result.token_ids for result in got] == [result.token_ids for result in expected]
    assert [result.text for result in got] == [result.text for result in expected]


def test_stops_inside_accepted_drafts_end_the_request_where_they_would(
    engine: LLMEngine, speculating: LLMEngine
) -> None:
    prompt = speculating.tokenizer.encode(REPETITIVE_TEXTS[0])
    free = token_ids(engine, [prompt], GREEDY)[0]
    text = speculating.tokenizer.decode(free)
    # A stop string, a stop token and a max_tokens all falling well after the first drafts are accepted.
    stop_string = text[len(text) * 2 // 3 :].split(",")[0].strip() or text[-3:]
    cases = [
        SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop=[stop_string]),
        SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop_token_ids=[free[25]]),
        SamplingParams(temperature=0.0, max_tokens=23, ignore_eos=True),
    ]
    for params in cases:
        accepted = speculating.stats().spec_accepted_tokens_total
        want, got = engine.generate([prompt], params)[0], speculating.generate([prompt], params)[0]
        assert speculating.stats().spec_accepted_tokens_total > accepted
        assert (got.token_ids, got.text, got.finish_reason, got.stop_reason) == (
            want.token_ids,
            want.text,
            want.finish_reason,
            want.stop_reason,
        ), params


def test_preempted_speculating_requests_keep_their_outputs(make_engine: EngineFactory, engine: LLMEngine) -> None:
    small = make_engine(num_kv_blocks=6, speculative_config=SPECULATIVE)
    prompts = [small.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    assert token_ids(small, prompts, GREEDY) == token_ids(engine, prompts, GREEDY)
    assert small.stats().num_preemptions > 0
    assert small.stats().kv_blocks_free == small.stats().kv_blocks_total


def test_embedding_requests_pool_their_prompt_alone(make_engine: EngineFactory, engine: LLMEngine) -> None:
    """A 17-token prompt under a 16-token budget: its last chunk is its last token, where a generation would
    take drafts; pooled with it, they would change the embedding."""
    chunked = make_engine(kv_cache_memory=16 << 20, max_num_batched_tokens=16, speculative_config=SPECULATIVE)
    prompt = ([1, 2, 3, 4, 5, 6] * 3)[:17]
    embedding = torch.tensor(chunked.embed([prompt])[0])
    assert torch.allclose(embedding, torch.tensor(engine.embed([prompt])[0]), atol=1e-4)
    assert chunked.stats().spec_draft_tokens_total == 0


def test_blocks_filled_by_accepted_drafts_serve_prefix_hits(engine: LLMEngine, make_engine: EngineFactory) -> None:
    fresh = make_engine(kv_cache_memory=64 << 20, speculative_config=SPECULATIVE)
    prompt = fresh.tokenizer.encode(REPETITIVE_TEXTS[1])
    first = token_ids(fresh, [prompt], GREEDY)[0]
    assert fresh.stats().spec_accepted_tokens_total > 0
    # The prompt and its output again: every full block of both is a hit, and the continuation is the same.
    again = prompt + first
    hits_before = fresh.stats().prefix_cache_hit_tokens
    assert token_ids(fresh, [again], GREEDY) == token_ids(engine, [again], GREEDY)
    block_size = fresh.block_manager.block_size
    assert fresh.stats().prefix_cache_hit_tokens - hits_before == (len(again) - 1) // block_size * block_size


def test_sampled_requests_speculate_with_their_own_filters(engine: LLMEngine, speculating: LLMEngine) -> None:
    """top_k 1 at any temperature is the argmax: the draft rows must pass through the request's filters."""
    prompts = [speculating.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    narrow = SamplingParams(temperature=0.9, top_k=1, max_tokens=40, ignore_eos=True)
    accepted = speculating.stats().spec_accepted_tokens_total
    assert token_ids(speculating, prompts, narrow) == token_ids(engine, prompts, GREEDY)
    assert speculating.stats().spec_accepted_tokens_total > accepted


def test_sampled_tokens_keep_their_distribution(engine: LLMEngine, speculating: LLMEngine) -> None:
    """128 samples of "repeat this sentence" at temperature 0.7, with drafts and without: the share of
    samples still copying the sentence after each token must agree. Verification that kept every draft
    would copy far more often (measured: 0.55 against 0.27 from the sixth token on)."""
    chat = [{"role": "user", "content": "Repeat exactly: The library opens at nine in the morning and closes at six."}]
    text = str(engine.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(temperature=0.7, max_tokens=8, ignore_eos=True)
    copy = token_ids(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=8))[0]
    before = speculating.stats()
    plain, drafted = token_ids(engine, [prompt] * 128, params), token_ids(speculating, [prompt] * 128, params)
    after = speculating.stats()

    def still_copying(samples: list[list[int]]) -> list[float]:
        return [sum(sample[: n + 1] == copy[: n + 1] for sample in samples) / len(samples) for n in range(8)]

    differences = [abs(a - b) for a, b in zip(still_copying(plain), still_copying(drafted), strict=True)]
    assert max(differences) < 0.15, (still_copying(plain), still_copying(drafted))
    # Drafts were both kept and turned down: the sampled verification decided.
    drafts = after.spec_draft_tokens_total - before.spec_draft_tokens_total
    accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
    assert 0.2 * drafts < accepted < 0.9 * drafts


def test_logprobs_of_accepted_drafts_are_their_own_positions(engine: LLMEngine, speculating: LLMEngine) -> None:
    prompt = speculating.tokenizer.encode(REPETITIVE_TEXTS[1])
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, logprobs=3)
    accepted = speculating.stats().spec_accepted_tokens_total

    def run(on: LLMEngine) -> tuple[list[int], list[TokenLogprobs], float | None]:
        request_id = f"logprobs-{on.stats().generation_tokens_total}"
        on.add_request(request_id, prompt, params)
        tokens: list[int] = []
        entries: list[TokenLogprobs] = []
        cumulative = None
        while on.has_unfinished_requests():
            for output in on.step():
                tokens += output.new_token_ids
                entries += output.logprobs or []
                cumulative = output.cumulative_logprob
        return tokens, entries, cumulative

    plain_tokens, plain_entries, plain_total = run(engine)
    tokens, entries, total = run(speculating)
    assert speculating.stats().spec_accepted_tokens_total > accepted
    assert tokens == plain_tokens and len(entries) == len(tokens)
    assert [entry.token_id for entry in entries] == tokens
    for got, want in zip(entries, plain_entries, strict=True):
        # A draft's row is computed in a prefill-shaped batch: the same values to float32 rounding.
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert [token for token, _ in got.top] == [token for token, _ in want.top]
    assert total == pytest.approx(plain_total, abs=1e-3)

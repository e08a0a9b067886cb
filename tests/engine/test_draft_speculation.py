"""Draft-model speculative decoding: its configuration and the drafts it refuses, the draft's cache against
what the target accepts, and engines that draft yielding exactly the tokens of one that does not when greedy
(with the target as its own draft, nearly every draft accepted, and with a random one, nearly none; beside
requests that do not speculate, under preemption and a small step budget), tokens of the same distribution
when sampling, and no draft blocks left behind by finished, preempted or aborted requests."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from engine import EngineConfig, LLMEngine, SamplingParams, SpeculativeConfig
from engine.draft_model import check_draft_model
from engine.draft_proposer import DraftModelProposer
from engine.request import Request
from tests.engine.conftest import PROMPT_TEXTS, EngineFactory
from tests.engine.test_speculative import GREEDY, REPETITIVE_TEXTS, token_ids
from tests.engine_models.tiny_checkpoints import SMALL, randomize

# SmolLM2's vocabulary: its tokenizer's tokens, every one a row.
SMOLLM2_VOCAB = 49152
# Where drafts are mostly turned down every step costs a verification of five rows: fewer tokens.
SHORT = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def drafting_with(model: Path, num_speculative_tokens: int = 4) -> SpeculativeConfig:
    return SpeculativeConfig(num_speculative_tokens=num_speculative_tokens, method="draft_model", model=str(model))


def save_tiny_llama(path: Path, seed: int, tokenizer_from: Path | None = None, **overrides: object) -> Path:
    """A random two-layer Llama (tests' SMALL with `overrides`), with the tokenizer of `tokenizer_from`."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**SMALL, **overrides}))
    randomize(model, seed=seed)
    model.save_pretrained(path)
    if tokenizer_from is not None:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    return path


def save_swapped_tokenizer(source: Path, path: Path) -> Path:
    """Into `path`: the tokenizer of `source` with the ids of two of its tokens swapped."""
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    first, second = (token for token, token_id in vocab.items() if token_id in (100, 200))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (path / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    shutil.copy(source / "tokenizer_config.json", path)
    return path


@pytest.fixture(scope="module")
def tiny_draft(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A random draft of SmolLM2's vocabulary and tokenizer: its drafts are seldom right."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-draft"), 3, model_dir, vocab_size=SMOLLM2_VOCAB, max_position_embeddings=8192
    )


@pytest.fixture(scope="module")
def self_drafting(make_engine: EngineFactory, model_dir: Path) -> LLMEngine:
    return make_engine(kv_cache_memory=64 << 20, speculative_config=drafting_with(model_dir))


@pytest.fixture(scope="module")
def tiny_drafting(make_engine: EngineFactory, tiny_draft: Path) -> LLMEngine:
    return make_engine(kv_cache_memory=64 << 20, speculative_config=drafting_with(tiny_draft))


def draft_proposer(engine: LLMEngine) -> DraftModelProposer:
    assert isinstance(engine.proposer, DraftModelProposer)
    return engine.proposer


def assert_no_draft_blocks_held(engine: LLMEngine) -> None:
    proposer = draft_proposer(engine)
    assert not proposer.sequences
    assert proposer.block_manager.num_free_blocks == proposer.block_manager.num_blocks


# -- configuration ---------------------------------------------------------------------------------------


def test_the_json_form_names_the_draft_model() -> None:
    implied = SpeculativeConfig.from_json('{"model": "/models/draft", "num_speculative_tokens": 4}')
    assert (implied.method, implied.model, implied.num_speculative_tokens) == ("draft_model", "/models/draft", 4)
    named = SpeculativeConfig.from_json(
        '{"method": "draft_model", "model": "d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1}'
    )
    assert (named.method, named.model) == ("draft_model", "d")
    assert SpeculativeConfig.from_json('{"num_speculative_tokens": 2}').model is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"method": "eagle", "model": "d", "num_speculative_tokens": 2}', "'eagle' is not supported"),
        ('{"method": "eagle3", "model": "d", "num_speculative_tokens": 2}', "'eagle3' is not supported"),
        ('{"method": "mtp", "num_speculative_tokens": 2}', "'mtp' is not supported"),
        ('{"method": "draft_model", "num_speculative_tokens": 2}', "needs the draft's checkpoint"),
        ('{"method": "ngram", "model": "d", "num_speculative_tokens": 2}', "takes no 'model'"),
        ('{"model": 7, "num_speculative_tokens": 2}', "must be a checkpoint directory"),
        ('{"model": "d", "num_speculative_tokens": 2, "prompt_lookup_max": 3}', "apply to method 'ngram' only"),
        ('{"model": "d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2}', "size 2 is not supported"),
        ('{"num_speculative_tokens": 2, "draft_tensor_parallel_size": 1}', "only method 'draft_model' has one"),
    ],
)
def test_bad_draft_configurations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpeculativeConfig.from_json(text)


def test_drafts_that_cannot_serve_the_target_are_refused_before_loading(
    make_engine: EngineFactory, model_dir: Path, tmp_path: Path
) -> None:
    cases = [
        # Another vocabulary size, and SmolLM2's 49152 tokens do not all have a row.
        (save_tiny_llama(tmp_path / "vocab", 3, max_position_embeddings=8192), "differ beyond padding"),
        # The same size, another tokenizer.
        (
            save_swapped_tokenizer(
                model_dir,
                save_tiny_llama(tmp_path / "tokenizer", 3, vocab_size=SMOLLM2_VOCAB, max_position_embeddings=8192),
            ),
            "maps tokens to other ids",
        ),
        (save_tiny_llama(tmp_path / "positions", 3, vocab_size=SMOLLM2_VOCAB), "below max_model_len 512"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            make_engine(speculative_config=drafting_with(path))


def test_padding_rows_past_the_tokenizers_tokens_are_no_mismatch(model_dir: Path, tmp_path: Path) -> None:
    padded = save_tiny_llama(tmp_path / "padded", 3, vocab_size=SMOLLM2_VOCAB + 64, max_position_embeddings=8192)
    config = EngineConfig(model=str(model_dir), max_model_len=512, speculative_config=drafting_with(padded))
    check_draft_model(config, torch.float32)


# -- the draft's cache -----------------------------------------------------------------------------------


def test_the_draft_cache_follows_what_the_target_accepts(tiny_drafting: LLMEngine) -> None:
    """A request's drafts, proposed step after step from a cache rewound to what was accepted, are those a
    fresh request with the same tokens gets from a cache it fills at once. Acceptance is played out by hand:
    a step that yields nothing (the request was not scheduled), drafts up to one the target turned down,
    drafts the target agreed with up to where the scheduler cut them, or every draft and the next token."""
    proposer = draft_proposer(tiny_drafting)
    rng = random.Random(0)
    prompt = tiny_drafting.tokenizer.encode(PROMPT_TEXTS[3])
    tracked = Request("tracked", prompt, GREEDY, priority=0, arrival_seq=0, arrival_time=0.0)
    outcomes = set()
    for round_index in range(40):
        limit = rng.choice([1, 2, 4, 6])
        drafts = proposer.propose_batch([tracked], [limit])[0]
        fresh = Request(f"fresh-{round_index}", list(tracked.all_token_ids), GREEDY, 0, 0, 0.0)
        assert drafts == proposer.propose_batch([fresh], [limit])[0], round_index
        proposer.release(fresh)
        assert len(drafts) == min(limit, 4)
        outcome = rng.choice(["none", "prefix", "rejected", "all+next"])
        outcomes.add(outcome)
        if outcome == "prefix":  # the target's token after the drafts it saw is the next draft
            tracked.all_token_ids += drafts[: rng.randrange(1, len(drafts) + 1)]
        elif outcome == "rejected":
            kept = rng.randrange(len(drafts))
            tracked.all_token_ids += drafts[:kept] + [(drafts[kept] + 1) % SMOLLM2_VOCAB]
        elif outcome == "all+next":  # every draft, then the token the draft would rank after them
            peek = Request("peek", tracked.all_token_ids + drafts, GREEDY, 0, 0, 0.0)
            tracked.all_token_ids += drafts + proposer.propose_batch([peek], [1])[0]
            proposer.release(peek)
    assert outcomes == {"none", "prefix", "rejected", "all+next"}
    proposer.release(tracked)
    assert_no_draft_blocks_held(tiny_drafting)


def test_a_prompt_beyond_the_step_budget_is_caught_up_over_several_proposals(
    tiny_drafting: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a 5-token budget the draft writes a prompt 5 tokens a proposal, drafting nothing until the last
    chunk; its drafts are then those of a prompt caught up at once."""
    proposer = draft_proposer(tiny_drafting)
    prompt = tiny_drafting.tokenizer.encode(PROMPT_TEXTS[3])
    monkeypatch.setattr(proposer, "max_num_batched_tokens", 5)
    chunked = Request("chunked", prompt, GREEDY, priority=0, arrival_seq=0, arrival_time=0.0)
    empty_proposals = 0
    while not (drafts := proposer.propose_batch([chunked], [4])[0]):
        empty_proposals += 1
        assert proposer.sequences["chunked"].num_computed_tokens == 5 * empty_proposals
    assert empty_proposals == -(-len(prompt) // 5) - 1 > 2
    monkeypatch.undo()
    fresh = Request("fresh", prompt, GREEDY, priority=0, arrival_seq=0, arrival_time=0.0)
    assert drafts == proposer.propose_batch([fresh], [4])[0]
    proposer.release(chunked)
    proposer.release(fresh)
    assert_no_draft_blocks_held(tiny_drafting)


# -- the engine ------------------------------------------------------------------------------------------


def test_the_target_drafting_for_itself_keeps_nearly_every_draft_and_the_outputs(
    engine: LLMEngine, self_drafting: LLMEngine
) -> None:
    prompts = [self_drafting.tokenizer.encode(text) for text in REPETITIVE_TEXTS + PROMPT_TEXTS[:2]]
    before = self_drafting.stats()
    assert token_ids(self_drafting, prompts, GREEDY) == token_ids(engine, prompts, GREEDY)
    after = self_drafting.stats()
    drafts = after.spec_draft_tokens_total - before.spec_draft_tokens_total
    accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
    # The draft ranks each token in a decode-shaped batch, the target in a prefill-shaped one: rounding
    # may part them on a near tie, nothing else.
    assert drafts > 0 and accepted >= 0.95 * drafts, (drafts, accepted)
    assert after.generation_tokens_total - before.generation_tokens_total == len(prompts) * GREEDY.max_tokens
    assert_no_draft_blocks_held(self_drafting)


def test_a_random_draft_is_turned_down_and_changes_nothing(engine: LLMEngine, tiny_drafting: LLMEngine) -> None:
    prompts = [tiny_drafting.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    before = tiny_drafting.stats()
    assert token_ids(tiny_drafting, prompts, SHORT) == token_ids(engine, prompts, SHORT)
    after = tiny_drafting.stats()
    drafts = after.spec_draft_tokens_total - before.spec_draft_tokens_total
    accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
    assert drafts > 0 and accepted < 0.1 * drafts, (drafts, accepted)
    assert_no_draft_blocks_held(tiny_drafting)


def test_requests_that_cannot_speculate_run_beside_drafting_ones(engine: LLMEngine, tiny_drafting: LLMEngine) -> None:
    prompts = [tiny_drafting.tokenizer.encode(text) for text in REPETITIVE_TEXTS + PROMPT_TEXTS[:1]]
    params = [
        SHORT,
        SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, logprobs=2, max_tokens=24, ignore_eos=True),
        # Fewer tokens left than num_speculative_tokens near its end: fewer drafts than the others.
        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
    ]
    drafts = tiny_drafting.stats().spec_draft_tokens_total
    expected, got = engine.generate(prompts, params), tiny_drafting.generate(prompts, params)
    assert tiny_drafting.stats().spec_draft_tokens_total > drafts
    assert [result.token_ids for result in got] == [result.token_ids for result in expected]
    assert [result.text for result in got] == [result.text for result in expected]
    assert_no_draft_blocks_held(tiny_drafting)


def test_preempted_requests_free_their_draft_blocks_and_keep_their_outputs(
    make_engine: EngineFactory, engine: LLMEngine, tiny_draft: Path
) -> None:
    """6 blocks for both caches, and a 16-token step budget that catches the draft up on a prompt over
    several steps."""
    small = make_engine(num_kv_blocks=6, max_num_batched_tokens=16, speculative_config=drafting_with(tiny_draft))
    proposer = draft_proposer(small)
    prompts = [small.tokenizer.encode(text) for text in REPETITIVE_TEXTS]
    assert max(len(prompt) for prompt in prompts) > 16
    ids = [f"preempt-{index}" for index in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        small.add_request(request_id, prompt, SHORT)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in ids}
    while small.has_unfinished_requests():
        for output in small.step():
            tokens[output.request_id] += output.new_token_ids
        # Only running requests hold draft blocks: a preempted one gave them back with its own.
        running = {request.request_id for request in small.scheduler.running}
        assert set(proposer.sequences) <= running
        held = sum(len(sequence.block_ids) for sequence in proposer.sequences.values())
        assert held == proposer.block_manager.num_blocks - proposer.block_manager.num_free_blocks
    assert small.stats().num_preemptions > 0 and small.stats().spec_draft_tokens_total > 0
    assert [tokens[request_id] for request_id in ids] == token_ids(engine, prompts, SHORT)
    assert_no_draft_blocks_held(small)


def test_aborted_requests_free_their_draft_blocks(tiny_drafting: LLMEngine) -> None:
    proposer = draft_proposer(tiny_drafting)
    for index, text in enumerate(REPETITIVE_TEXTS[:2]):
        tiny_drafting.add_request(f"abort-{index}", tiny_drafting.tokenizer.encode(text), SHORT)
    while len(proposer.sequences) < 2:
        tiny_drafting.step()
    free = proposer.block_manager.num_free_blocks
    held = len(proposer.sequences["abort-0"].block_ids)
    tiny_drafting.abort_request("abort-0")
    assert set(proposer.sequences) == {"abort-1"}
    assert proposer.block_manager.num_free_blocks == free + held
    tiny_drafting.abort_request("abort-1")
    while tiny_drafting.has_unfinished_requests():
        tiny_drafting.step()
    assert_no_draft_blocks_held(tiny_drafting)


def test_sampled_tokens_keep_their_distribution(make_engine: EngineFactory, tmp_path: Path, model_dir: Path) -> None:
    """512 samples at temperature 0.1 of a tiny random target drafting for itself, and without drafts: the
    share of samples still on the greedy path after each token must agree. Verification that kept every draft
    would stay on it every time (measured: 0.37 of samples after four tokens, with drafts and without)."""
    target = save_tiny_llama(tmp_path / "target", 5)

    def tiny(**overrides: object) -> LLMEngine:
        return make_engine(
            model=str(target), tokenizer=str(model_dir), max_model_len=128, kv_cache_memory=16 << 20, **overrides
        )

    plain, drafting = tiny(), tiny(speculative_config=drafting_with(target))
    prompt = [5, 17, 33, 99, 120, 7]
    greedy = token_ids(plain, [prompt], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]
    params = SamplingParams(temperature=0.1, max_tokens=8, ignore_eos=True)
    samples_plain, samples_drafted = token_ids(plain, [prompt] * 512, params), token_ids(drafting, [prompt] * 512, params)

    def on_greedy_path(samples: list[list[int]]) -> list[float]:
        return [sum(sample[: n + 1] == greedy[: n + 1] for sample in samples) / len(samples) for n in range(8)]

    differences = [abs(a - b) for a, b in zip(on_greedy_path(samples_plain), on_greedy_path(samples_drafted), strict=True)]
    assert max(differences) < 0.1, (on_greedy_path(samples_plain), on_greedy_path(samples_drafted))
    assert on_greedy_path(samples_plain)[3] < 0.6
    stats = drafting.stats()
    assert 0.2 * stats.spec_draft_tokens_total < stats.spec_accepted_tokens_total < 0.9 * stats.spec_draft_tokens_total
    assert_no_draft_blocks_held(drafting)

"""Incremental detokenization and stop strings with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from engine.detokenizer import TextStream
from engine.sampling_params import SamplingParams

TEXTS = [
    "Hello world! How are you?  Fine, thanks...",
    "Emoji: 😀🎉 👍🏽 and a family 👨‍👩‍👧 done.",
    "中文测试：你好，世界。日本語もテストします。",
    "Mixed: naïve café — “quotes” and\ttabs\nnew lines   three spaces.",
]
PROMPT = "User says:"


def stream_deltas(
    tokenizer: PreTrainedTokenizerBase, token_ids: list[int], params: SamplingParams
) -> tuple[list[str], str | None, int]:
    """Feed tokens one at a time like the engine; returns deltas, the stop string and tokens consumed."""
    text = TextStream(tokenizer, tokenizer.encode(PROMPT), params)
    deltas = []
    for count, token in enumerate(token_ids, start=1):
        stop = text.append([token], check_stop=True)
        deltas.append(text.release(finished=stop is not None or count == len(token_ids)))
        if stop is not None:
            return deltas, stop, count
    return deltas, None, len(token_ids)


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_decoded_text(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text)
    deltas, _, _ = stream_deltas(tokenizer, ids, SamplingParams())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas), deltas


def test_incomplete_utf8_is_held_back(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode(" 😀")
    assert len(ids) >= 2, "the emoji must span tokens for this test to mean anything"
    deltas, _, _ = stream_deltas(tokenizer, ids, SamplingParams())
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == " 😀"


def test_stop_string_spanning_tokens_is_cut_and_never_leaks(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "The quick brown fox jumps over the lazy dog and keeps running far away."
    ids = tokenizer.encode(text)
    stop = "lazy dog"
    assert len(tokenizer.encode(" lazy dog")) > 1
    deltas, matched, consumed = stream_deltas(tokenizer, ids, SamplingParams(stop=[stop]))
    assert matched == stop
    assert "".join(deltas) == "The quick brown fox jumps over the "
    # Generation ends on the token that completes the stop string, not later.
    assert tokenizer.decode(ids[:consumed]).endswith("dog") and not tokenizer.decode(
        ids[: consumed - 1]
    ).endswith("dog")
    assert all("lazy" not in delta for delta in deltas)


def test_include_stop_str_in_output(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Answer: 42. END of the answer"
    ids = tokenizer.encode(text)
    deltas, matched, _ = stream_deltas(
        tokenizer, ids, SamplingParams(stop=["END", "never"], include_stop_str_in_output=True)
    )
    assert matched == "END" and "".join(deltas) == "Answer: 42. END"


def test_hold_back_releases_text_that_is_not_a_stop(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "abc lazy cat, lazy dot, and a lazy do"
    ids = tokenizer.encode(text)
    deltas, matched, _ = stream_deltas(tokenizer, ids, SamplingParams(stop=["lazy dog"]))
    assert matched is None and "".join(deltas) == text
    # While running, at most len("lazy dog") - 1 characters were held back.
    released = 0
    for count, delta in enumerate(deltas[:-1], start=1):
        released += len(delta)
        assert released >= len(tokenizer.decode(ids[:count])) - 7


def test_special_tokens_skipped_or_kept(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = (
        tokenizer.encode("Hi") + [tokenizer.convert_tokens_to_ids("<|im_end|>")] + tokenizer.encode(" there")
    )
    skipped, _, _ = stream_deltas(tokenizer, ids, SamplingParams())
    assert "".join(skipped) == "Hi there"
    kept, _, _ = stream_deltas(tokenizer, ids, SamplingParams(skip_special_tokens=False))
    assert "".join(kept) == "Hi <|im_end|>  there"
    tight, _, _ = stream_deltas(
        tokenizer, ids, SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False)
    )
    assert "".join(tight) == "Hi<|im_end|> there"

"""Incremental detokenization and stop strings, so streamed deltas concatenate to the final text.

Decoding token by token is wrong for byte-level BPE (a character may span tokens) and for
tokenizers that merge spaces, so each step decodes a short window (vLLM's prefix/read offsets):
the text of tokens[prefix:read] is already released, the text of tokens[prefix:] minus it is new.
A window ending in U+FFFD is an incomplete UTF-8 sequence and is held until it completes. Stop
strings are searched in the new text plus its overlap with the old; until generation ends, the last
len(longest stop) - 1 characters are held back so a stop string never leaks into a delta.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from engine.sampling_params import SamplingParams

# Prompt tokens that seed the window so the first output token decodes with its context (vLLM: 5).
_INITIAL_WINDOW = 5
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a stream of token ids into a stream of complete characters."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: list[int], params: SamplingParams
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._spaces_between_special = params.spaces_between_special_tokens
        self._special_ids = set(tokenizer.all_special_ids)
        self._special_tokens = set(tokenizer.all_special_tokens)
        self._tokens = self._to_tokens(prompt_token_ids[-(_INITIAL_WINDOW + 1) :])
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(self._read_offset - _INITIAL_WINDOW, 0)

    def append(self, token_ids: list[int]) -> str:
        """Decode newly generated tokens; returns the characters they complete (maybe '')."""
        self._tokens.extend(self._to_tokens(token_ids))
        prefix_text = self._to_text(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._to_text(self._tokens[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        return new_text[len(prefix_text) :]

    def _to_tokens(self, token_ids: list[int]) -> list[str]:
        if self._skip_special:
            token_ids = [token for token in token_ids if token not in self._special_ids]
        return list(self._tokenizer.convert_ids_to_tokens(token_ids))

    def _to_text(self, tokens: list[str]) -> str:
        """Tokens to text; special tokens kept (skip_special_tokens=False) are their own segments,
        joined by spaces when spaces_between_special_tokens (vLLM semantics)."""
        if self._skip_special or not self._special_tokens.intersection(tokens):
            return self._tokenizer.convert_tokens_to_string(tokens)
        segments: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in self._special_tokens:
                if run:
                    segments.append(self._tokenizer.convert_tokens_to_string(run))
                    run = []
                segments.append(token)
            else:
                run.append(token)
        if run:
            segments.append(self._tokenizer.convert_tokens_to_string(run))
        return (" " if self._spaces_between_special else "").join(segments)


class TextStream:
    """A request's output text: detokenization, stop strings and the released/held-back split."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: list[int], params: SamplingParams
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params)
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._hold_back = max((len(stop) for stop in self._stops), default=1) - 1
        # Everything decoded so far (cut at a matched stop string).
        self.text = ""
        # Characters of `text` already handed out as deltas.
        self._released = 0

    def append(self, token_ids: list[int], check_stop: bool) -> str | None:
        """Add tokens to the text; returns the stop string they completed, if `check_stop`."""
        new_text = self._detokenizer.append(token_ids)
        if not new_text:
            return None
        old_length = len(self.text)
        self.text += new_text
        if not check_stop or not self._stops:
            return None
        match: tuple[int, str] | None = None
        for stop in self._stops:
            index = self.text.find(stop, max(old_length - len(stop) + 1, 0))
            if index >= 0 and (match is None or index < match[0]):
                match = (index, stop)
        if match is None:
            return None
        index, stop = match
        self.text = self.text[: index + len(stop) if self._include_stop else index]
        return stop

    def release(self, finished: bool) -> str:
        """The next delta: everything when finished, else all but the held-back tail."""
        end = len(self.text) if finished else max(len(self.text) - self._hold_back, self._released)
        delta = self.text[self._released : end]
        self._released = end
        return delta

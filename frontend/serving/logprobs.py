"""Raw engine logprobs -> OpenAI's two logprobs shapes (chat's token list, completions' parallel lists)
and vLLM's prompt logprobs (token id -> logprob, rank and text, per prompt position).

Token texts are each token decoded on its own, as vLLM returns them (a token holding part of a
multi-byte character decodes to U+FFFD; `bytes` then tells the truth only for whole characters).
-inf (a token no sampling could pick) is sent as -9999.0, as vLLM does: JSON has no infinities.
"""

from __future__ import annotations

import math

from frontend.protocol.chat import ChoiceLogprobs, TokenLogprob, TopLogprob
from frontend.protocol.completions import CompletionLogprobs
from frontend.protocol.sampling import PromptLogprob, PromptLogprobs
from frontend.templating import ChatTemplater
from frontend.triton_client import TokenLogprob as EngineLogprob

_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    return max(logprob, _FLOOR) if not math.isnan(logprob) else _FLOOR


class LogprobFormatter:
    """Formats one request's logprobs with the model's tokenizer; the top lists are cut to `num_top`.
    `tokens_as_ids` (vLLM's return_tokens_as_token_ids) names tokens "token_id:<id>" instead of their text,
    for tokens whose text alone cannot tell them apart (parts of one character decode to U+FFFD alike)."""

    def __init__(self, templater: ChatTemplater, num_top: int, tokens_as_ids: bool = False) -> None:
        self._templater = templater
        self._num_top = num_top
        self._tokens_as_ids = tokens_as_ids
        self._texts: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self._templater.decode([token_id])
        return text

    def _label(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self._tokens_as_ids else self.token_text(token_id)

    def chat(self, entries: list[EngineLogprob]) -> ChoiceLogprobs:
        return ChoiceLogprobs(content=[self._chat_entry(entry) for entry in entries])

    def _chat_entry(self, entry: EngineLogprob) -> TokenLogprob:
        text = self._label(entry.token_id)
        top = [self._top(token, logprob) for token, logprob in entry.top[: self._num_top]]
        return TokenLogprob(
            token=text, logprob=_finite(entry.logprob), bytes=list(text.encode("utf-8")), top_logprobs=top
        )

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self._label(token_id)
        return TopLogprob(token=text, logprob=_finite(logprob), bytes=list(text.encode("utf-8")))

    def completion(
        self, entries: list[EngineLogprob | None], first_token_id: int | None, offset: int
    ) -> CompletionLogprobs:
        """Completions logprobs for consecutive tokens starting at character `offset` of the choice's
        text. A None entry (the echoed prompt's first token) is `first_token_id` without logprobs."""
        result = CompletionLogprobs()
        for entry in entries:
            if entry is None:
                if first_token_id is None:
                    continue
                token_id, logprob, top = first_token_id, None, None
            else:
                token_id, logprob = entry.token_id, _finite(entry.logprob)
                top = {self._label(token): _finite(value) for token, value in entry.top[: self._num_top]}
                # OpenAI: "up to logprobs + 1 elements", the chosen token always among them (as in vLLM).
                top.setdefault(self._label(token_id), logprob)
            result.tokens.append(self._label(token_id))
            result.token_logprobs.append(logprob)
            result.top_logprobs.append(top)
            # Offsets into the choice's text, whatever names the tokens.
            result.text_offset.append(offset)
            offset += len(self.token_text(token_id))
        return result

    def prompt(self, entries: list[EngineLogprob | None]) -> PromptLogprobs:
        """vLLM's prompt_logprobs: at each position the prompt's token (with its rank) and the top ones
        (ranked by their order), the prompt's token first."""
        result: PromptLogprobs = []
        for entry in entries:
            if entry is None:
                result.append(None)
                continue
            position = {entry.token_id: self._prompt_entry(entry.token_id, entry.logprob, entry.rank)}
            for rank, (token, logprob) in enumerate(entry.top[: self._num_top], start=1):
                position.setdefault(token, self._prompt_entry(token, logprob, rank))
            result.append(position)
        return result

    def _prompt_entry(self, token_id: int, logprob: float, rank: int | None) -> PromptLogprob:
        return PromptLogprob(logprob=_finite(logprob), rank=rank, decoded_token=self.token_text(token_id))


def requested_prompt_logprobs(
    templater: ChatTemplater, num_top: int | None, entries: list[EngineLogprob | None] | None
) -> PromptLogprobs | None:
    """A response's vLLM prompt_logprobs: None unless the request asked (`num_top`, its prompt_logprobs)."""
    if num_top is None:
        return None
    return LogprobFormatter(templater, num_top).prompt(entries or [])

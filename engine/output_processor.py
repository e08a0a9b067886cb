"""Turns sampled tokens into RequestOutputs: stop conditions on tokens, then text and stop strings.

The engine owns termination: EOS, stop token ids, max_tokens and max_model_len are decided here
on tokens, and a stop string found in the text ends the request in the same step (the engine then
frees its blocks), so no further token is computed for it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from engine.detokenizer import TextStream
from engine.outputs import RequestOutput, TokenLogprobs
from engine.request import Request


class OutputProcessor:
    """Per-request text state plus the stop checks; only the engine thread calls it."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: frozenset[int], max_model_len: int
    ) -> None:
        self.tokenizer = tokenizer
        # Every id that ends generation unless ignore_eos: the tokenizer's EOS and the checkpoint's.
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self._texts: dict[str, TextStream] = {}

    def add(self, request: Request) -> None:
        self._texts[request.request_id] = TextStream(self.tokenizer, request.prompt_token_ids, request.params)

    def discard(self, request: Request) -> None:
        """Forget a request that never ran (its admission failed half-way)."""
        self._texts.pop(request.request_id, None)

    def append_tokens(
        self, request: Request, tokens: list[int], logprobs: list[TokenLogprobs | None] | None = None
    ) -> RequestOutput:
        """Record a step's tokens in order (one sampled, or accepted speculative ones and the model's next)
        up to the first that finishes the request, and release their text. `logprobs`: aligned with
        `tokens`, their raw logprobs where computed."""
        appended: list[int] = []
        for token in tokens:
            self._append(request, token)
            appended.append(token)
            if request.finish_reason is not None:
                break
        kept = [entry for entry in (logprobs or [])[: len(appended)] if entry is not None]
        output = self._output(request, appended)
        params = request.params
        if kept:
            request.cumulative_logprob += sum(entry.logprob for entry in kept)
            output.cumulative_logprob = request.cumulative_logprob
            if params.logprobs is not None:
                output.logprobs = kept
        if params.prompt_logprobs is not None and request.num_output_tokens == 1:
            output.prompt_logprobs = list(request.prompt_logprobs)
        return output

    def _append(self, request: Request, token: int) -> None:
        """One token: the stop checks on it, then its text (and the stop strings on that)."""
        request.all_token_ids.append(token)
        params = request.params
        text = self._texts[request.request_id]
        past_min_tokens = request.num_output_tokens >= params.min_tokens
        is_stop_token = past_min_tokens and (
            (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids
        )
        if is_stop_token:
            request.finish_reason = "stop"
            # vLLM's stop_reason: None for the tokenizer's EOS; the checkpoint's other EOS ids (Qwen3's
            # <|endoftext|> beside <|im_end|>) act as stop token ids there and are named like them.
            is_eos = token == self.tokenizer.eos_token_id and not params.ignore_eos
            request.stop_reason = None if is_eos else token
        elif (params.max_tokens is not None and request.num_output_tokens >= params.max_tokens) or (
            request.num_tokens >= self.max_model_len
        ):
            request.finish_reason = "length"
        if not is_stop_token or params.include_stop_str_in_output:
            stop_string = text.append([token], check_stop=past_min_tokens and not is_stop_token)
            if stop_string is not None:
                request.finish_reason, request.stop_reason = "stop", stop_string

    def finish_pooled(self, request: Request, embedding: list[float]) -> RequestOutput:
        """The one output of an embedding request: its vector, finish_reason "stop"."""
        request.finish_reason = "stop"
        output = self._output(request, [])
        output.embedding = embedding
        return output

    def finish(self, request: Request, reason: str, error: str | None = None) -> RequestOutput:
        """The last output of a request ended outside the token path (abort, engine error)."""
        request.finish_reason = reason
        return self._output(request, [], error)

    def _output(self, request: Request, new_token_ids: list[int], error: str | None = None) -> RequestOutput:
        finished = request.finish_reason is not None
        text = self._texts[request.request_id]
        if finished:
            del self._texts[request.request_id]
        return RequestOutput(
            request_id=request.output_id,
            index=request.index,
            new_token_ids=new_token_ids,
            text_delta=text.release(finished),
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            finished=finished,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
            error=error,
            arrival_time=request.arrival_time,
            first_token_time=request.first_token_time,
        )

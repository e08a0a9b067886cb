"""vLLM's beam search (`use_beam_search`: n beams), run the way vLLM's OpenAI server runs it: every step
sends each live beam to the engine as a one-token request asking for the 2n most likely next tokens, keeps
the n best continuations by cumulative logprob, and sets aside the beams that ended (EOS, a stop token id).
The prefix cache holds each beam's earlier tokens, so a step computes little more than one token a beam.

The n best of the ended and the still-live beams, by cumulative logprob over length ** length_penalty (the
prompt counted in the length, the stop token not, as vLLM scores), are answered whole once the search is
over: a stream gets each beam as one chunk. Ranking uses the model's raw logprobs, which sampling settings
do not change; a request setting one that would change what a search chooses (top_p, penalties, a grammar,
stop strings, ...) is refused by name rather than quietly ignored.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass, field

from frontend.errors import bad_request
from frontend.serving.context import ServingContext
from frontend.serving.engine_params import EngineParameters, kept_prompt
from frontend.triton_client import GenerationChunk, GenerationInput, TokenLogprob, TritonError

# The engine's cap on logprobs a token (vLLM's max_logprobs default): a step asks for 2n.
MAX_LOGPROBS = 20
# Engine parameters a search takes into account. temperature and seed are accepted as vLLM's beam
# search accepts them, though neither changes the raw logprobs it ranks by.
HONORED = frozenset(
    {
        "n",
        "temperature",
        "seed",
        "ignore_eos",
        "min_tokens",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "stop_token_ids",
        "logprobs",
        "prompt_logprobs",
        "truncate_prompt_tokens",
    }
)
# Parameters every request carries, accepted at the value that leaves a search unchanged.
NEUTRAL = {"spaces_between_special_tokens": True}


@dataclass
class BeamSearchSettings:
    """What one search runs with, read from the request's engine parameters."""

    # n: beams kept each step, and answers returned.
    width: int
    # The output token limit (the context's room when the request left it open).
    max_tokens: int
    # Beams' scores divide their cumulative logprob by length ** length_penalty.
    length_penalty: float
    ignore_eos: bool
    # Stop tokens count only from this many output tokens on (below, they are never chosen).
    min_tokens: int
    # A beam that ended on a stop token keeps it in its text (its token ids always hold it).
    include_stop_str_in_output: bool
    skip_special_tokens: bool
    # Token ids that end a beam besides the tokenizer's EOS.
    stop_token_ids: frozenset[int]
    # Top logprobs returned with each token (None: none asked).
    logprobs: int | None
    # Top logprobs of each prompt token (None: none asked), taken by the first step.
    prompt_logprobs: int | None


@dataclass
class Beam:
    """One hypothesis: its output tokens so far and their logprob entries."""

    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    # One per token: its logprob and the step's most likely tokens.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # "stop" once a stop token ended it; its stop_reason is None for the tokenizer's EOS.
    finish_reason: str | None = None
    stop_reason: int | None = None

    def extended(self, entry: TokenLogprob, finish_reason: str | None = None, stop_reason: int | None = None) -> Beam:
        return Beam(
            [*self.token_ids, entry.token_id],
            self.cumulative_logprob + entry.logprob,
            [*self.logprobs, entry],
            finish_reason,
            stop_reason,
        )

    def score(self, num_prompt_tokens: int, length_penalty: float, eos_token_id: int | None) -> float:
        """vLLM's beam score: the prompt counts in the length, a final EOS (even under ignore_eos, as vLLM
        counts it) or the stop token id that ended the beam does not."""
        ends_on_stop = self.finish_reason == "stop" or (bool(self.token_ids) and self.token_ids[-1] == eos_token_id)
        length = num_prompt_tokens + len(self.token_ids) - ends_on_stop
        return self.cumulative_logprob / (length**length_penalty)


def beam_search_settings(params: EngineParameters, max_tokens: int | None, room: int | None) -> BeamSearchSettings:
    """The search a request asks for; 400 naming any field it would have to ignore. `room`: the output
    tokens the context leaves after the prompt (None: unknown)."""
    assert params.beam_search is not None
    sampling = params.sampling
    for name, value in sampling.items():
        if name not in HONORED and value not in ([], {}) and (name not in NEUTRAL or NEUTRAL[name] != value):
            field_name = params.origins.get(name, name)
            raise bad_request(f"{field_name} cannot be used with use_beam_search", param=field_name)
    width = int(sampling.get("n", 1))
    if 2 * width > MAX_LOGPROBS:
        raise bad_request(
            f"beam search ranks each beam's 2n most likely next tokens and the engine returns at most "
            f"{MAX_LOGPROBS}: n must be at most {MAX_LOGPROBS // 2}",
            param="n",
        )
    if max_tokens is None:
        if room is None:
            raise bad_request("beam search needs max_tokens where the context length is unknown", param="max_tokens")
        max_tokens = room
    return BeamSearchSettings(
        width=width,
        max_tokens=max_tokens if room is None else min(max_tokens, room),
        length_penalty=params.beam_search.length_penalty,
        ignore_eos=bool(sampling.get("ignore_eos", False)),
        min_tokens=int(sampling.get("min_tokens", 0)),
        include_stop_str_in_output=bool(sampling.get("include_stop_str_in_output", False)),
        skip_special_tokens=bool(sampling.get("skip_special_tokens", True)),
        stop_token_ids=frozenset(sampling.get("stop_token_ids") or ()),
        logprobs=sampling.get("logprobs"),
        prompt_logprobs=sampling.get("prompt_logprobs"),
    )


class BeamSearch:
    """One request's search over the engine model, step by step."""

    def __init__(
        self, ctx: ServingContext, request: GenerationInput, prompt_token_ids: list[int], settings: BeamSearchSettings
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.prompt_token_ids = prompt_token_ids
        self.settings = settings
        self.eos_token_id = ctx.templater.tokenizer.eos_token_id
        # Filled by the first step: the engine's account of the prompt.
        self.num_cached_tokens = 0
        self.prompt_logprobs: list[TokenLogprob | None] | None = None

    async def run(self) -> list[Beam]:
        """The `width` best beams, best first."""
        settings = self.settings
        live = [Beam()]
        ended: list[Beam] = []
        for step in range(settings.max_tokens):
            tasks = [asyncio.create_task(self._next_tokens(beam, step, index)) for index, beam in enumerate(live)]
            try:
                entries = await asyncio.gather(*tasks)
            finally:
                # A failed step (or the client leaving) ends the search, cancelling the other beams' requests.
                for task in tasks:
                    task.cancel()
            candidates: list[Beam] = []
            for beam, top in zip(live, entries, strict=True):
                for entry in top:
                    if not self._ends(entry.token_id):
                        candidates.append(beam.extended(entry))
                    elif len(beam.token_ids) + 1 >= settings.min_tokens:
                        stop_reason = None if entry.token_id == self.eos_token_id else entry.token_id
                        ended.append(beam.extended(entry, "stop", stop_reason))
            # Stable: among equal logprobs the earlier beam's and the likelier token's continuation wins.
            candidates.sort(key=lambda candidate: candidate.cumulative_logprob, reverse=True)
            live = candidates[: settings.width]
            if not live:
                break
        best = sorted(
            [*ended, *live],
            key=lambda beam: beam.score(len(self.prompt_token_ids), settings.length_penalty, self.eos_token_id),
            reverse=True,
        )
        return best[: settings.width]

    def _ends(self, token_id: int) -> bool:
        """Whether a token ends a beam: the tokenizer's EOS (unless ignore_eos) or a stop token id."""
        is_eos = token_id == self.eos_token_id and not self.settings.ignore_eos
        return is_eos or token_id in self.settings.stop_token_ids

    async def _next_tokens(self, beam: Beam, step: int, index: int) -> list[TokenLogprob]:
        """The 2n most likely tokens after a beam, each as its logprob entry."""
        settings = self.settings
        sampling: dict[str, object] = {"temperature": 0.0, "logprobs": max(2 * settings.width, settings.logprobs or 0)}
        if step == 0 and settings.prompt_logprobs is not None:
            sampling["prompt_logprobs"] = settings.prompt_logprobs
        request = GenerationInput(
            prompt_token_ids=self.prompt_token_ids + beam.token_ids,
            stream=False,
            max_tokens=1,
            sampling=sampling,
            priority=self.request.priority,
            cache_salt=self.request.cache_salt,
            lora_name=self.request.lora_name,
            lora_path=self.request.lora_path,
            request_id=f"{self.request.request_id}-beam-{step}-{index}",
        )
        top: list[tuple[int, float]] | None = None
        async with aclosing(self.ctx.triton.generate(request)) as responses:
            async for chunk in responses:
                if chunk.prompt_logprobs is not None:
                    self.prompt_logprobs = chunk.prompt_logprobs
                if step == 0:
                    self.num_cached_tokens = chunk.num_cached_tokens
                if chunk.logprobs:
                    top = chunk.logprobs[0].top
        if top is None:
            raise TritonError("the engine model answered a beam search step without logprobs")
        return [TokenLogprob(token_id, logprob, top) for token_id, logprob in top[: 2 * settings.width]]

    def chunks(self, beams: list[Beam]) -> list[GenerationChunk]:
        """The answer: each beam whole, as the engine model's final response of sequence i would be."""
        settings = self.settings
        tokenizer = self.ctx.templater.tokenizer
        answer = []
        for index, beam in enumerate(beams):
            shown = beam.token_ids
            if beam.finish_reason == "stop" and not settings.include_stop_str_in_output:
                shown = shown[:-1]
            answer.append(
                GenerationChunk(
                    text=str(tokenizer.decode(shown, skip_special_tokens=settings.skip_special_tokens)),
                    token_ids=beam.token_ids,
                    num_input_tokens=len(self.prompt_token_ids),
                    num_output_tokens=len(beam.token_ids),
                    num_cached_tokens=self.num_cached_tokens,
                    finish_reason=beam.finish_reason or "length",
                    final=index == len(beams) - 1,
                    index=index,
                    logprobs=beam.logprobs if settings.logprobs is not None else None,
                    prompt_logprobs=self.prompt_logprobs,
                    cumulative_logprob=beam.cumulative_logprob,
                    stop_reason=beam.stop_reason,
                )
            )
        return answer


async def beam_search_answer(ctx: ServingContext, request: GenerationInput, params: EngineParameters) -> list[GenerationChunk]:
    """A whole search's answer: the engine model's final response of each of the n beams, best first."""
    limit = await ctx.max_model_len()
    prompt = kept_prompt(request.prompt_token_ids, params.sampling.get("truncate_prompt_tokens"), limit)
    room = None if limit is None else limit - len(prompt)
    search = BeamSearch(ctx, request, prompt, beam_search_settings(params, request.max_tokens, room))
    return search.chunks(await search.run())

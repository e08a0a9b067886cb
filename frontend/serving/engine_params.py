"""OpenAI request fields -> the engine model's vLLM-named sampling parameters, and Triton failures -> API errors.

Everything the client asked for is forwarded, supported or not: the engine is the one authority on what it
implements and rejects the rest by name. `origins` remembers which request field produced each engine
parameter, so the 400 names the field the client actually sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from frontend.errors import APIError, bad_request, overloaded, unavailable
from frontend.generation_defaults import SAMPLING_FIELDS
from frontend.protocol.sampling import SamplingRequest
from frontend.triton_stream import (
    TritonError,
    TritonOverloadedError,
    TritonRequestError,
    TritonUnavailableError,
)

# SamplingRequest fields forwarded under the same name whenever the client set them.
FORWARDED = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop_token_ids",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "allowed_token_ids",
    "bad_words",
    "truncate_prompt_tokens",
    "stream_interval",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
# Booleans and counts the engine always receives (their defaults are the engine's defaults too).
ALWAYS = (
    "ignore_eos",
    "min_tokens",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "spaces_between_special_tokens",
)

_PARAMETER_NAME = re.compile(r"parameter '([A-Za-z_]+)'")


@dataclass
class BeamSearchRequest:
    """vLLM's use_beam_search: n beams (frontend/serving/beam_search.py), the rest of the parameters as sent."""

    # Beams are ranked by cumulative logprob / length ** length_penalty.
    length_penalty: float


@dataclass
class EngineParameters:
    """The `sampling_parameters` JSON object and where each entry came from."""

    # vLLM SamplingParams name -> value.
    sampling: dict[str, Any] = field(default_factory=dict)
    # SamplingParams name -> request field that set it, when they differ (e.g. structured_outputs <- tool_choice).
    origins: dict[str, str] = field(default_factory=dict)
    # Set when the request asks for beam search instead of sampling.
    beam_search: BeamSearchRequest | None = None

    def set(self, name: str, value: Any, origin: str | None = None) -> None:
        if name == "structured_outputs" and name in self.sampling:
            # Say response_format and a forced tool choice, or structured_outputs and response_format: vLLM
            # refuses more than one constraint rather than letting one silently win.
            earlier = self.origins.get(name, name)
            raise bad_request(f"{origin or name} and {earlier} both constrain the output: give one", param=origin or name)
        self.sampling[name] = value
        if origin is not None and origin != name:
            self.origins[name] = origin


def engine_parameters(request: SamplingRequest, defaults: Mapping[str, Any]) -> EngineParameters:
    """The sampling fields common to chat and completions; `defaults` (the generation config's) fill the
    sampling fields the request leaves unset, except in a beam search (which, as vLLM's, ignores them)."""
    if request.guided_decoding_backend not in (None, "auto", "xgrammar"):
        raise bad_request(
            f"structured outputs use xgrammar here, not {request.guided_decoding_backend!r}",
            param="guided_decoding_backend",
        )
    params = EngineParameters()
    if request.use_beam_search:
        params.beam_search = BeamSearchRequest(request.length_penalty)
    for name in FORWARDED:
        value = getattr(request, name)
        # Empty containers mean "nothing asked", as in vLLM; everything else goes to the engine.
        if value is not None and value != {} and value != []:
            params.set(name, value)
    for name in ALWAYS:
        params.set(name, getattr(request, name))
    if not request.use_beam_search:
        for name in SAMPLING_FIELDS:
            if getattr(request, name) is None and name in defaults:
                params.set(name, defaults[name])
    if request.stop is not None:
        params.set("stop", request.stop_strings())
    if request.n != 1:
        params.set("n", request.n)
    if request.prompt_logprobs is not None and request.stream:
        # vLLM's rule: a stream has no place for them (0 asks for no top tokens and passes, unanswered).
        if request.prompt_logprobs > 0:
            raise bad_request("prompt_logprobs are not available with stream=true", param="prompt_logprobs")
    elif request.prompt_logprobs is not None:
        params.set("prompt_logprobs", request.prompt_logprobs)
    return params


def max_tokens_or_default(
    requested: int | None,
    defaults: Mapping[str, Any],
    cap: int | None,
    num_prompt_tokens: int,
    truncate_prompt_tokens: int | None,
    limit: int | None,
) -> int | None:
    """The max_tokens a request sent, else the generation config's within the room the context leaves the
    prompt the engine keeps (as vLLM takes the smaller), else None (the engine's own default: all the room);
    never above `cap` (FrontendConfig.max_tokens_cap)."""
    value = defaults.get("max_tokens") if requested is None else requested
    if cap is not None:
        value = cap if value is None else min(value, cap)
    if requested is not None or value is None or limit is None:
        return value
    return max(1, min(value, limit - truncated_length(num_prompt_tokens, truncate_prompt_tokens, limit)))


def add_response_format(request: SamplingRequest, params: EngineParameters) -> None:
    """The response_format's constraint, after any other (a second one is then refused naming it)."""
    structured = request.response_format.structured_outputs() if request.response_format else None
    if structured is not None:
        params.set("structured_outputs", structured, origin="response_format")


def truncated_length(num_prompt_tokens: int, truncate_prompt_tokens: int | None, max_model_len: int) -> int:
    """The prompt length the engine will see once it applies truncate_prompt_tokens (-1: max_model_len - 1)."""
    if truncate_prompt_tokens is None:
        return num_prompt_tokens
    keep = max_model_len - 1 if truncate_prompt_tokens == -1 else truncate_prompt_tokens
    return min(num_prompt_tokens, keep)


def kept_prompt(token_ids: list[int], truncate_prompt_tokens: int | None, max_model_len: int | None) -> list[int]:
    """The prompt token ids the engine keeps (truncate_prompt_tokens: the last k; -1, as many as
    max_model_len allows, unknown here without it: all)."""
    if truncate_prompt_tokens is None or (truncate_prompt_tokens == -1 and max_model_len is None):
        return token_ids
    keep = truncated_length(len(token_ids), truncate_prompt_tokens, max_model_len or 0)
    return token_ids[len(token_ids) - keep :]


def api_error(error: TritonError, params: EngineParameters, prompt_field: str | None) -> APIError:
    """What a Triton failure means to the client: its fault (400), Triton's absence (503), or a bug (502).
    A context-length refusal names `prompt_field` (None where the inputs come from several fields)."""
    message = str(error)
    if isinstance(error, TritonOverloadedError):
        return overloaded(f"the server is overloaded: {message}")
    if isinstance(error, TritonUnavailableError):
        return unavailable(f"the inference server is unavailable: {message}")
    if isinstance(error, TritonRequestError):
        if "max_model_len" in message or "context length" in message.lower():
            return bad_request(message, param=prompt_field, code="context_length_exceeded")
        match = _PARAMETER_NAME.search(message)
        if match:
            name = match.group(1)
            return bad_request(message, param=params.origins.get(name, name))
        return bad_request(message)
    return APIError(502, f"the inference server failed: {message}", "server_error", None, "bad_gateway")

"""Per-request sampling parameters with vLLM's names, defaults and meaning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.structured_output import StructuredOutputsParams


@dataclass
class SamplingParams:
    """How one request's tokens are chosen and when it ends; validated on construction."""

    # Most tokens to generate; None = until max_model_len.
    max_tokens: int | None = 16
    # EOS and stop token ids are masked out until this many tokens were generated.
    min_tokens: int = 0
    # 0 = greedy; otherwise logits are divided by it before sampling.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    top_p: float = 1.0
    # Keep only the k most likely tokens; 0 or -1 = off.
    top_k: int = 0
    # Drop tokens whose probability is below min_p times the most likely token's.
    min_p: float = 0.0
    # Per-request seed: the request's random draws do not depend on what else is in the batch.
    seed: int | None = None
    # Strings that end generation when they appear in the output text.
    stop: list[str] = field(default_factory=list)
    # Token ids that end generation (in addition to EOS).
    stop_token_ids: list[int] = field(default_factory=list)
    # Keep generating past EOS.
    ignore_eos: bool = False
    # Keep the matched stop string (or stop token's text) in the output text.
    include_stop_str_in_output: bool = False
    # Leave special tokens out of the output text.
    skip_special_tokens: bool = True
    # Put a space between special tokens and their neighbours when they are not skipped.
    spaces_between_special_tokens: bool = True
    # Penalties (vLLM/OpenAI semantics): presence and frequency count output tokens only and are
    # subtracted from the logits; repetition (> 1 discourages) divides positive and multiplies
    # negative logits of every token seen in the prompt or the output.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # Token id -> value added to its logit (clamped to [-100, 100] as in vLLM).
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Only these token ids may be sampled; None = all.
    allowed_token_ids: list[int] | None = None
    # Words never to generate: a word's last token is banned whenever the output ends with its others.
    bad_words: list[str] = field(default_factory=list)
    # Keep only the last k prompt tokens (-1 = as many as max_model_len allows); None = the whole prompt.
    truncate_prompt_tokens: int | None = None
    # Per generated token: the sampled token's logprob plus this many most likely ones (0..20); None = off.
    logprobs: int | None = None
    # Per prompt token (after the first): its logprob plus this many most likely ones; None = off.
    prompt_logprobs: int | None = None
    # Sequences returned for the prompt.
    n: int = 1
    # Sequences generated, of which the n with the highest cumulative logprob are returned; None = n.
    best_of: int | None = None
    # Streaming: tokens gathered into each output (raises the engine's stream_interval, never lowers it);
    # None = the engine's. Servers only (AsyncEngine): LLMEngine.step always yields every token.
    stream_interval: int | None = None
    # Constrain the output to a JSON schema, regex, choice, grammar, ... (xgrammar); None = free text.
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = [int(token) for token in self.stop_token_ids]
        if self.top_k == -1:
            self.top_k = 0
        # Any k past the vocabulary keeps every token; past this one it would not fit the sampler's tensor.
        self.top_k = min(self.top_k, _MAX_TOP_K)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if not 0.0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be non-negative and finite, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or -1 (off) or positive, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if any(not stop for stop in self.stop):
            raise ValueError("stop must not contain empty strings")
        if any(token < 0 for token in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative, got {self.stop_token_ids}")
        self._check_penalties()
        self._check_token_constraints()
        self._check_logprobs_and_sequences()

    def _check_penalties(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0.0 < self.repetition_penalty < math.inf:
            raise ValueError(f"repetition_penalty must be positive and finite, got {self.repetition_penalty}")

    def _check_token_constraints(self) -> None:
        try:
            self.logit_bias = {
                int(token): max(min(float(bias), _MAX_BIAS), -_MAX_BIAS)
                for token, bias in self.logit_bias.items()
            }
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias must map token ids to numbers, got {self.logit_bias!r}") from None
        if any(math.isnan(bias) for bias in self.logit_bias.values()):
            raise ValueError("logit_bias values must be numbers, got NaN")
        if any(token < 0 for token in self.logit_bias):
            raise ValueError(f"logit_bias token ids must be non-negative, got {sorted(self.logit_bias)}")
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = [int(token) for token in self.allowed_token_ids]
            if not self.allowed_token_ids or any(token < 0 for token in self.allowed_token_ids):
                raise ValueError("allowed_token_ids must be a non-empty list of non-negative token ids")
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        if any(not word.strip() for word in self.bad_words):
            raise ValueError("bad_words must not contain empty strings")
        if self.truncate_prompt_tokens is not None and not (
            self.truncate_prompt_tokens == -1 or self.truncate_prompt_tokens >= 1
        ):
            raise ValueError(f"truncate_prompt_tokens must be -1 or >= 1, got {self.truncate_prompt_tokens}")

    def _check_logprobs_and_sequences(self) -> None:
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {value}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.stream_interval is not None and self.stream_interval < 1:
            raise ValueError(f"stream_interval must be at least 1, got {self.stream_interval}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        # Sequence i of an n > 1 request draws from seed + i: every one must fit torch's generators.
        if self.seed is not None and not 0 <= self.seed <= _MAX_SEED - (self.num_sequences - 1):
            raise ValueError(
                f"seed must be in [0, {_MAX_SEED - (self.num_sequences - 1)}] for {self.num_sequences} "
                f"sequences, got {self.seed}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_TEMPERATURE

    @property
    def num_sequences(self) -> int:
        """Sequences generated for the prompt (best_of when set, else n)."""
        return self.best_of if self.best_of is not None else self.n

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


# Most top logprobs per token (OpenAI's limit for top_logprobs).
MAX_LOGPROBS = 20
# vLLM clamps logit_bias values to this magnitude (OpenAI documents [-100, 100]).
_MAX_BIAS = 100.0
# The largest seed torch's generators take (the API takes up to 2**63 - 1, as vLLM's does).
_MAX_SEED = 2**64 - 1
_MAX_TOP_K = 2**31 - 1
# Below this temperature sampling is greedy (vLLM's threshold): dividing by it would overflow.
_GREEDY_TEMPERATURE = 1e-5

"""Per-request sampling parameters with vLLM's names, defaults and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = [int(token) for token in self.stop_token_ids]
        if self.top_k == -1:
            self.top_k = 0
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or -1 (off) or positive, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if any(not stop for stop in self.stop):
            raise ValueError("stop must not contain empty strings")
        if any(token < 0 for token in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative, got {self.stop_token_ids}")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_TEMPERATURE


# Below this temperature sampling is greedy (vLLM's threshold): dividing by it would overflow.
_GREEDY_TEMPERATURE = 1e-5

"""Engine test fixtures: the tokenizer, a shared engine, and Hugging Face greedy references (once per session)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from engine import EngineConfig, LLMEngine

PROMPT_TEXTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the edge of a dark forest, there lived an old woodcutter who",
    "1, 2, 3, 4,",
    "Explain in simple words why the sky is blue and why sunsets are red, as if talking to a child:",
    "Q: What is the boiling point of water at sea level in Celsius?\nA:",
    "Translate to French: Good morning, how are you today? I hope the weather is nice where you are, "
    "because here it has been raining for three days without a pause and everyone is tired of it.",
]
# A long shared prefix (several full blocks) put before some prompts to exercise prefix-cache hits.
SYSTEM_TEXT = (
    "You are a careful assistant. Answer briefly, precisely and politely, and never invent facts. " * 3
)
NUM_SYSTEM_PROMPTS = 4
SYSTEM_MAX_TOKENS = 8
# Few new tokens per prompt: the whole area must run in minutes on two shared cores.
MAX_TOKENS = [8, 8, 10, 10, 12, 12, 14, 16]


@dataclass
class Reference:
    """HF transformers greedy outputs of PROMPT_TEXTS (fp32, CPU)."""

    prompts: list[list[int]]
    max_tokens: list[int]
    outputs: list[list[int]]
    # SYSTEM_TEXT + the first NUM_SYSTEM_PROMPTS prompts, SYSTEM_MAX_TOKENS new tokens each.
    system_prompts: list[list[int]]
    system_outputs: list[list[int]]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These models are tiny: on a 2-core machine shared with other processes, one intra-op thread is
    several times faster than two fighting over busy cores (measured 7x for HF generate)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def model_dir(model_path: Path) -> Path:
    return model_path


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def reference(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Reference:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [tokenizer.encode(text) for text in PROMPT_TEXTS]
    system_prompts = [tokenizer.encode(SYSTEM_TEXT + text) for text in PROMPT_TEXTS[:NUM_SYSTEM_PROMPTS]]

    def hf_greedy(prompt: list[int], max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt])
        generated = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens
        )
        return generated[0, len(prompt) :].tolist()

    with torch.inference_mode(), torch_threads(1):
        outputs = [hf_greedy(prompt, n) for prompt, n in zip(prompts, MAX_TOKENS, strict=True)]
        system_outputs = [hf_greedy(prompt, SYSTEM_MAX_TOKENS) for prompt in system_prompts]
    return Reference(prompts, MAX_TOKENS, outputs, system_prompts, system_outputs)


EngineFactory = Callable[..., LLMEngine]


@pytest.fixture(scope="session")
def make_engine(model_dir: Path) -> EngineFactory:
    """Build an LLMEngine on the CPU in float32 with config overrides."""

    def build(**overrides: object) -> LLMEngine:
        settings: dict = {"model": str(model_dir), "device": "cpu", "dtype": "float32", "max_model_len": 512}
        settings.update(overrides)
        return LLMEngine(EngineConfig(**settings))

    return build


@pytest.fixture(scope="session")
def engine(make_engine: EngineFactory) -> Iterator[LLMEngine]:
    """The shared default engine (prefix caching on, a large pool). Tests must leave it idle."""
    built = make_engine(kv_cache_memory=64 << 20)
    yield built
    assert not built.has_unfinished_requests()

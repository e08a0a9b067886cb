"""LoRA adapters: the engine's outputs with an adapter equal Hugging Face + PEFT's with the same adapter,
for every projection PEFT targets, rsLoRA, several adapters and the base model mixed in one batch, prefix
caching kept apart per adapter; adapters the engine cannot serve are refused naming why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from engine import (
    EngineConfig,
    EngineOverloadedError,
    InvalidRequestError,
    LLMEngine,
    SamplingParams,
    SpeculativeConfig,
)
from engine.lora import load_adapter
from engine.models.lora import FLOAT32_MAX_ROWS, LoRABatch, ProjectionLoRA, _OutputPart
from tests.engine.conftest import PROMPT_TEXTS, EngineFactory, torch_threads
from tests.lora_adapter import write_random_adapter

MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
PROMPTS = PROMPT_TEXTS[:3]


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two adapters PEFT wrote: every projection at rank 8, and q/v only at rank 4 with rsLoRA."""
    root = tmp_path_factory.mktemp("lora")
    every = write_random_adapter(model_dir, root / "every", seed=1)
    qv = write_random_adapter(
        model_dir, root / "qv", seed=2, rank=4, target_modules=("q_proj", "v_proj"), use_rslora=True
    )
    return {"every": str(every), "qv": str(qv)}


@pytest.fixture(scope="module")
def prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    return [tokenizer.encode(text) for text in PROMPTS]


@pytest.fixture(scope="module")
def peft_outputs(
    model_dir: Path, adapters: dict[str, str], prompts: list[list[int]]
) -> dict[str | None, list[list[int]]]:
    """Greedy tokens of Hugging Face transformers with PEFT's own LoRA layers (float32), by adapter."""
    def greedy(model: torch.nn.Module) -> list[list[int]]:
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            generated = model.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_TOKENS
            )
            outputs.append(generated[0, len(prompt) :].tolist())
        return outputs

    results: dict[str | None, list[list[int]]] = {}
    with torch.inference_mode(), torch_threads(1):
        for name in (None, *adapters):
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            if name is not None:
                model = PeftModel.from_pretrained(model, adapters[name])
            results[name] = greedy(model.eval())
    return results


@pytest.fixture(scope="module")
def lora_engine(make_engine: EngineFactory, adapters: dict[str, str]) -> LLMEngine:
    return make_engine(lora_modules=adapters, kv_cache_memory=32 << 20)


def test_each_adapter_matches_peft(
    lora_engine: LLMEngine, prompts: list[list[int]], peft_outputs: dict[str | None, list[list[int]]]
) -> None:
    # The adapters change the outputs (else the comparison would prove nothing).
    assert peft_outputs["every"] != peft_outputs[None] and peft_outputs["qv"] != peft_outputs[None]
    for name in (None, "every", "qv"):
        results = lora_engine.generate(prompts, GREEDY, lora_name=name)
        assert [r.token_ids for r in results] == peft_outputs[name], name


def test_adapters_and_base_mixed_in_one_batch(
    lora_engine: LLMEngine, prompts: list[list[int]], peft_outputs: dict[str | None, list[list[int]]]
) -> None:
    names: list[str | None] = ["every", None, "qv", "qv", "every", None]
    batch = [prompts[i % len(prompts)] for i in range(len(names))]
    results = lora_engine.generate(batch, GREEDY, lora_name=names)
    expected = [peft_outputs[name][i % len(prompts)] for i, name in enumerate(names)]
    assert [r.token_ids for r in results] == expected


def test_prefix_cache_is_kept_apart_per_adapter(
    lora_engine: LLMEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    # Four full blocks of 16 tokens: the base model's blocks must not serve the adapter, nor one adapter's
    # the other's, while the same adapter hits its own.
    prompt = tokenizer.encode("A long shared prefix about the history of bridges and rivers. " * 6)
    assert len(prompt) > 64
    params = SamplingParams(temperature=0.0, max_tokens=2)
    cached = {}
    for label, name in (("base", None), ("every", "every"), ("qv", "qv"), ("every again", "every")):
        [result] = lora_engine.generate([prompt], params, lora_name=name)
        cached[label] = result.num_cached_tokens
    assert cached["every"] == 0 and cached["qv"] == 0
    assert cached["every again"] >= 64


def test_speculation_and_preemption_keep_adapter_outputs(
    make_engine: EngineFactory,
    adapters: dict[str, str],
    prompts: list[list[int]],
    peft_outputs: dict[str | None, list[list[int]]],
) -> None:
    # 4 blocks: all six requests together need more, so some are preempted and recomputed with their
    # adapter; n-gram drafts are verified through the adapter's layers too.
    engine = make_engine(
        lora_modules=adapters,
        num_kv_blocks=4,
        speculative_config=SpeculativeConfig(
            num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=2
        ),
    )
    names: list[str | None] = ["every", "qv", None] * 2
    batch = [prompts[i % len(prompts)] for i in range(len(names))]
    results = engine.generate(batch, GREEDY, lora_name=names)
    assert [r.token_ids for r in results] == [peft_outputs[n][i % len(prompts)] for i, n in enumerate(names)]
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.spec_draft_tokens_total > 0


def test_parallel_sequences_inherit_the_adapter(
    lora_engine: LLMEngine, prompts: list[list[int]], peft_outputs: dict[str | None, list[list[int]]]
) -> None:
    lora_engine.add_request(
        "n2", prompts[0], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, n=2), lora_name="qv"
    )
    tokens: dict[int, list[int]] = {0: [], 1: []}
    while lora_engine.has_unfinished_requests():
        for output in lora_engine.step():
            tokens[output.index].extend(output.new_token_ids)
    assert tokens[0] == tokens[1] == peft_outputs["qv"][0]


def test_unknown_adapter_is_refused_by_name(lora_engine: LLMEngine, prompts: list[list[int]]) -> None:
    with pytest.raises(InvalidRequestError, match=r"LoRA adapter 'sql' is not loaded \(loaded: every, qv\)"):
        lora_engine.add_request("unknown", prompts[0], GREEDY, lora_name="sql")
    assert not lora_engine.has_unfinished_requests()


def test_adapters_loaded_at_run_time_match_peft(
    make_engine: EngineFactory,
    adapters: dict[str, str],
    prompts: list[list[int]],
    peft_outputs: dict[str | None, list[list[int]]],
) -> None:
    # One configured adapter, the other brought by its requests: loaded at the first, kept for the next.
    engine = make_engine(
        lora_modules={"every": adapters["every"]}, allow_runtime_lora_updating=True, kv_cache_memory=32 << 20
    )
    names: list[str | None] = ["qv", "every", None, "qv"]
    batch = [prompts[i % len(prompts)] for i in range(len(names))]
    results = engine.generate(batch, GREEDY, lora_name=names, lora_paths={"qv": adapters["qv"]})
    assert [r.token_ids for r in results] == [peft_outputs[n][i % len(prompts)] for i, n in enumerate(names)]
    assert engine.runner.adapters.slot_of("qv") == 2
    # Once loaded, its name alone serves (as the configured one's does).
    assert engine.generate(prompts[:1], GREEDY, lora_name="qv")[0].token_ids == peft_outputs["qv"][0]


def test_runtime_adapters_take_turns_in_max_loras_slots(
    make_engine: EngineFactory,
    adapters: dict[str, str],
    prompts: list[list[int]],
    peft_outputs: dict[str | None, list[list[int]]],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    engine = make_engine(max_loras=1, allow_runtime_lora_updating=True, kv_cache_memory=32 << 20)
    # The same prompt under the same name but another adapter must not reuse the first one's blocks.
    prefix = tokenizer.encode("A long shared prefix about the history of bridges and rivers. " * 6)
    short = SamplingParams(temperature=0.0, max_tokens=2)
    [first] = engine.generate([prefix], short, lora_name="a", lora_paths={"a": adapters["every"]})
    # One slot: "b" evicts the idle "a", then "a" (its old directory) evicts "b" and is loaded afresh.
    for name, directory in (("b", "qv"), ("a", "every"), ("b", "qv")):
        [result] = engine.generate(
            prompts[:1], GREEDY, lora_name=name, lora_paths={name: adapters[directory]}
        )
        assert result.token_ids == peft_outputs[directory][0], name
        assert list(engine.runner.adapters.adapters) == [name]
    [again] = engine.generate([prefix], short, lora_name="b", lora_paths={"b": adapters["every"]})
    assert first.num_cached_tokens == 0 and again.num_cached_tokens == 0
    assert engine.runner.adapters.adapters["b"].path == adapters["every"]

    # An adapter in use keeps its slot: a request for another one is refused until it ends.
    engine.add_request("busy", prompts[0], GREEDY, lora_name="b")
    with pytest.raises(EngineOverloadedError, match="all 1 LoRA adapter slots .* queue is full"):
        engine.add_request("waits", prompts[1], GREEDY, lora_name="c", lora_path=adapters["qv"])
    with pytest.raises(InvalidRequestError, match="serving requests with"):
        engine.add_request("other-dir", prompts[1], GREEDY, lora_name="b", lora_path=adapters["qv"])
    while engine.has_unfinished_requests():
        engine.step()
    [result] = engine.generate(prompts[:1], GREEDY, lora_name="c", lora_paths={"c": adapters["qv"]})
    assert result.token_ids == peft_outputs["qv"][0]


def test_a_salt_cannot_pass_for_an_adapters(lora_engine: LLMEngine, prompts: list[list[int]]) -> None:
    with pytest.raises(InvalidRequestError, match="NUL"):
        lora_engine.add_request("nul", prompts[0], GREEDY, cache_salt="\x00lora:every:1")
    assert not lora_engine.has_unfinished_requests()


def test_runtime_loading_refusals(
    make_engine: EngineFactory, adapters: dict[str, str], prompts: list[list[int]], tmp_path: Path
) -> None:
    static = make_engine(lora_modules={"every": adapters["every"]}, kv_cache_memory=16 << 20)
    with pytest.raises(InvalidRequestError, match="allow_runtime_lora_updating is off"):
        static.add_request("r1", prompts[0], GREEDY, lora_name="qv", lora_path=adapters["qv"])
    with pytest.raises(InvalidRequestError, match="configured \\(lora_modules\\) with"):
        static.add_request("r2", prompts[0], GREEDY, lora_name="every", lora_path=adapters["qv"])
    with pytest.raises(InvalidRequestError, match="lora_path needs the lora_name"):
        static.add_request("r3", prompts[0], GREEDY, lora_path=adapters["qv"])
    with pytest.raises(ValueError, match="max_loras 1 leaves no slot"):
        make_engine(lora_modules={"every": adapters["every"]}, allow_runtime_lora_updating=True, max_loras=1)
    dynamic = make_engine(allow_runtime_lora_updating=True, kv_cache_memory=16 << 20)
    with pytest.raises(InvalidRequestError, match="adapter_config.json"):
        dynamic.add_request("r4", prompts[0], GREEDY, lora_name="missing", lora_path=str(tmp_path))
    assert not dynamic.runner.adapters.adapters and not dynamic.has_unfinished_requests()


def test_batch_groups_rows_by_slot() -> None:
    assert LoRABatch.from_slots(torch.tensor([0, 0, 0]), torch.float32) is None
    assert LoRABatch.from_slots(torch.tensor([2, 2]), torch.float32) == LoRABatch(((2, None),))
    batch = LoRABatch.from_slots(torch.tensor([1, 0, 2, 1]), torch.bfloat16)
    assert batch is not None
    groups = [(slot, mask.dtype, mask.squeeze(1).tolist()) for slot, mask in batch.groups if mask is not None]
    assert groups == [(1, torch.bfloat16, [1, 0, 0, 1]), (2, torch.bfloat16, [0, 0, 1, 0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [FLOAT32_MAX_ROWS, FLOAT32_MAX_ROWS + 1])
def test_projection_update_of_a_fused_layer(dtype: torch.dtype, num_rows: int) -> None:
    # q (rank 4) and v (rank 2) of a q|k|v layer with outputs 8|4|4; every other row takes the adapter.
    # A bfloat16 model computes updates of few rows in float32 and of more in bfloat16: both sizes.
    generator = torch.Generator().manual_seed(0)
    a_q, a_v = torch.randn(4, 16, generator=generator), torch.randn(2, 16, generator=generator)
    b_q, b_v = torch.randn(8, 4, generator=generator), torch.randn(4, 2, generator=generator)
    lora = ProjectionLoRA()
    parts = (_OutputPart(0, b_q.to(dtype)), _OutputPart(12, b_v.to(dtype)))
    lora.set(1, torch.cat([a_q, a_v]).to(dtype), parts, out_features=16)
    x = torch.randn(num_rows, 16, generator=generator).to(dtype)
    slots = torch.arange(num_rows) % 2
    batch = LoRABatch.from_slots(slots, dtype)
    assert batch is not None
    y = torch.zeros(num_rows, 16, dtype=dtype)
    lora.add_to(x, y, batch)
    expected = torch.zeros(num_rows, 16)
    expected[:, :8] = x.float() @ a_q.to(dtype).float().T @ b_q.to(dtype).float().T
    expected[:, 12:] = x.float() @ a_v.to(dtype).float().T @ b_v.to(dtype).float().T
    expected[slots == 0] = 0
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(
        y.float(), expected, atol=tolerance, rtol=0.02 if dtype == torch.bfloat16 else 1e-5
    )


Weights = dict[str, torch.Tensor]


def _edited_copy(
    source: str, target: Path, config_changes: dict, edit_weights: Callable[[Weights], Weights] | None = None
) -> Path:
    """A copy of adapter `source` in `target` with some config keys changed and its weights edited."""
    target.mkdir()
    config = json.loads((Path(source) / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    weights = load_file(Path(source) / "adapter_model.safetensors")
    save_file(
        weights if edit_weights is None else edit_weights(weights), target / "adapter_model.safetensors"
    )
    return target


@pytest.mark.parametrize(
    ("config_changes", "message"),
    [
        ({"use_dora": True}, "not supported: use_dora=True"),
        ({"bias": "all"}, "not supported: bias='all'"),
        ({"lora_bias": True}, "not supported: lora_bias=True"),
        ({"fan_in_fan_out": True}, "not supported: fan_in_fan_out=True"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
        ({"r": 16}, r"has A \(8, \d+\) and B \(576, 8\), not rank 16"),
    ],
)
def test_unsupported_adapters_are_refused(
    adapters: dict[str, str], tmp_path: Path, config_changes: dict, message: str
) -> None:
    edited = _edited_copy(adapters["every"], tmp_path / "edited", config_changes)
    with pytest.raises(ValueError, match=message):
        load_adapter("edited", edited)


def test_adapters_of_other_layers_or_models_are_refused(
    make_engine: EngineFactory, adapters: dict[str, str], tmp_path: Path
) -> None:
    def with_head(weights: Weights) -> Weights:
        return {**weights, "base_model.model.lm_head.lora_A.weight": torch.zeros(8, 576)}

    head = _edited_copy(adapters["every"], tmp_path / "head", {}, with_head)
    with pytest.raises(
        ValueError, match="lm_head.lora_A.weight is not a LoRA factor of a supported projection"
    ):
        load_adapter("head", head)

    def widened(weights: Weights) -> Weights:
        name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        return {**weights, name: torch.zeros(8, 1024)}

    other_model = _edited_copy(adapters["every"], tmp_path / "other", {}, widened)
    with pytest.raises(ValueError, match=r"layers.0.self_attn.q_proj has A \(8, 1024\).*576 x 576"):
        make_engine(lora_modules={"other": str(other_model)})

    def deeper(weights: Weights) -> Weights:
        prefix = "base_model.model.model.layers.40.mlp.down_proj"
        return {
            **weights,
            f"{prefix}.lora_A.weight": torch.zeros(8, 1536),
            f"{prefix}.lora_B.weight": torch.zeros(576, 8),
        }

    deeper_model = _edited_copy(adapters["every"], tmp_path / "deeper", {}, deeper)
    with pytest.raises(ValueError, match="LoRA adapter 'deeper': the model has no layers.40.mlp.down_proj"):
        make_engine(lora_modules={"deeper": str(deeper_model)})
    with pytest.raises(ValueError, match=r"cannot read .*adapter_config.json: No such file"):
        load_adapter("missing", tmp_path / "missing")
    pickled = _edited_copy(adapters["every"], tmp_path / "pickled", {})
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"has adapter_model.bin \(pickled; re-save it"):
        load_adapter("pickled", pickled)
    with pytest.raises(ValueError, match="lora_modules maps adapter names to directories"):
        EngineConfig(model="m", lora_modules={"": "/x"})

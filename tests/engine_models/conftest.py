"""Session fixtures: tiny random-weight HF checkpoints saved once, with their HF reference models.

Without CUDA the Triton-backend tests run the kernels under TRITON_INTERPRET (set by tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM

from kernels import ops
from tests.engine_models.tiny_checkpoints import TINY_CASES, TinyCase, TinyCheckpoint, randomize


@pytest.fixture(scope="session", params=TINY_CASES, ids=lambda case: case.name)
def tiny_checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TinyCheckpoint:
    case: TinyCase = request.param
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(case.make_config(), attn_implementation="eager")
    randomize(hf_model, seed=1)
    path = tmp_path_factory.mktemp(case.name)
    if case.max_shard_size is None:
        hf_model.save_pretrained(path)
    else:
        hf_model.save_pretrained(path, max_shard_size=case.max_shard_size)
    return TinyCheckpoint(path, hf_model.eval(), sharded=case.max_shard_size is not None)


@pytest.fixture
def triton_backend() -> Iterator[torch.device]:
    """Route `kernels.ops` to the Triton kernels for one test (interpreted on the CPU); yields the device
    the model must live on."""
    ops.set_backend("triton")
    yield torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ops.set_backend("auto")

"""/v1/models: the served model list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tritonllm"
    root: str
    parent: str | None = None
    # vLLM extension: the context length (None while Triton has not told it, ServingContext.max_model_len).
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's POST /v1/load_lora_adapter."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    # The PEFT adapter directory, as the engine's host sees it.
    lora_path: str = Field(min_length=1)
    # Replace the adapter already loaded under this name.
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's POST /v1/unload_lora_adapter."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    # vLLM's id of the adapter; names identify adapters here, so it is accepted and not read.
    lora_int_id: int | None = None

"""vLLM's runtime LoRA updating: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.

A loaded adapter is this frontend's (as it is a vLLM server's): it is listed by /v1/models and served as a
request's `model`, and every such request carries its directory to the engine, so whichever engine
instance serves it loads it at its first request (engine.lora_slots). Loading checks it right away: a
one-token embedding request with the adapter makes the engine load it, refusing a directory that holds no
adapter for this model.
"""

from __future__ import annotations

import asyncio
import uuid

from frontend.errors import APIError, bad_request
from frontend.protocol.models import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from frontend.serving.context import RuntimeAdapter, ServingContext
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.triton_client import EmbeddingInput, TritonError


class LoRAAdapterHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        # Loads in progress, by name: a second load of a name waits for the first to decide.
        self._loading: dict[str, asyncio.Lock] = {}

    async def load(self, request: LoadLoRAAdapterRequest, request_id: str) -> str:
        await self._check_enabled()
        name, config = request.lora_name, self.ctx.config
        if name in config.served_model_names or name in config.speech_model_names:
            raise bad_request(f"'{name}' is the name of a served model, not free for an adapter", "lora_name")
        async with self._loading.setdefault(name, asyncio.Lock()):
            if name in await self.ctx.lora_modules() and not (
                request.load_inplace and name in self.ctx.runtime_adapters
            ):
                raise bad_request(f"The lora adapter '{name}' has already been loaded.", "lora_name")
            adapter = RuntimeAdapter(request.lora_path, f"{name}@{uuid.uuid4().hex[:12]}")
            probe = EmbeddingInput(
                prompt_token_ids=[0],
                lora_name=adapter.engine_name,
                lora_path=adapter.path,
                request_id=f"{request_id}-load",
            )
            try:
                await self.ctx.triton.embed(probe)
            except TritonError as error:
                raise api_error(error, EngineParameters(), None) from None
            self.ctx.runtime_adapters[name] = adapter
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload(self, request: UnloadLoRAAdapterRequest) -> str:
        await self._check_enabled()
        name = request.lora_name
        if self.ctx.runtime_adapters.pop(name, None) is not None:
            return f"Success: LoRA adapter '{name}' removed successfully."
        if name in await self.ctx.lora_modules():
            raise bad_request(
                f"The lora adapter '{name}' is configured in the llm model's lora_modules: it stays loaded",
                "lora_name",
            )
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", "not_found_error", "lora_name")

    async def _check_enabled(self) -> None:
        # As in vLLM, where these routes exist only with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
        if not await self.ctx.runtime_lora():
            raise APIError(
                404,
                "runtime LoRA updating is off: set allow_runtime_lora_updating in the llm model's profile",
                "not_found_error",
            )

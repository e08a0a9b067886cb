"""/v1/models: the served names of the language model, its LoRA adapters (as vLLM lists them: after the
base model, their parent) and the served names of the speech model behind Triton."""

from __future__ import annotations

from frontend.protocol.models import ModelCard, ModelList
from frontend.serving.context import ServingContext


class ModelsHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def _card(self, name: str) -> ModelCard:
        return ModelCard(
            id=name,
            created=self.ctx.started,
            root=str(self.ctx.config.model),
            max_model_len=await self.ctx.max_model_len(),
        )

    async def _adapter_card(self, name: str, directory: str) -> ModelCard:
        # root: the adapter's directory as the llm model configures it (on Triton's host, as vLLM's is on its).
        return ModelCard(
            id=name,
            created=self.ctx.started,
            root=directory,
            parent=self.ctx.config.model_name,
            max_model_len=await self.ctx.max_model_len(),
        )

    def _speech_card(self, name: str) -> ModelCard:
        # The frontend never sees the speech checkpoint: its root is the Triton model that serves it.
        return ModelCard(id=name, created=self.ctx.started, root=str(self.ctx.config.triton_speech_model))

    async def list(self) -> ModelList:
        config = self.ctx.config
        adapters = await self.ctx.lora_modules()
        return ModelList(
            data=[await self._card(name) for name in config.served_model_names]
            + [await self._adapter_card(name, directory) for name, directory in adapters.items()]
            + [self._speech_card(name) for name in config.speech_model_names]
        )

    async def retrieve(self, model: str) -> ModelCard:
        if model in self.ctx.config.speech_model_names:
            return self._speech_card(model)
        served = await self.ctx.resolve_model(model)
        if served.lora_name is not None:
            return await self._adapter_card(served.name, (await self.ctx.lora_modules())[served.name])
        return await self._card(served.name)

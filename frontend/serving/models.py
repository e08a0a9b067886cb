"""/v1/models: the served names of the language model and of the speech model behind Triton."""

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

    def _speech_card(self, name: str) -> ModelCard:
        # The frontend never sees the speech checkpoint: its root is the Triton model that serves it.
        return ModelCard(id=name, created=self.ctx.started, root=str(self.ctx.config.triton_speech_model))

    async def list(self) -> ModelList:
        config = self.ctx.config
        return ModelList(
            data=[await self._card(name) for name in config.served_model_names]
            + [self._speech_card(name) for name in config.speech_model_names]
        )

    async def retrieve(self, model: str) -> ModelCard:
        if model in self.ctx.config.speech_model_names:
            return self._speech_card(model)
        return await self._card(self.ctx.check_model(model))

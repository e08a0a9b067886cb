"""/v1/models: the served names of the one model behind Triton."""

from __future__ import annotations

from frontend.protocol.models import ModelCard, ModelList
from frontend.serving.context import ServingContext


class ModelsHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _card(self, name: str) -> ModelCard:
        config = self.ctx.config
        return ModelCard(
            id=name, created=self.ctx.started, root=str(config.model), max_model_len=config.max_model_len
        )

    def list(self) -> ModelList:
        return ModelList(data=[self._card(name) for name in self.ctx.config.served_model_names])

    def retrieve(self, model: str) -> ModelCard:
        return self._card(self.ctx.check_model(model))

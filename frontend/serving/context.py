"""What every handler shares: configuration, the Triton client, the tokenizer and the metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from frontend.config import FrontendConfig
from frontend.errors import model_not_found
from frontend.metrics import FrontendMetrics
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient


@dataclass
class ServingContext:
    """Long-lived objects built once at startup; handlers never keep per-request state here."""

    # The typed CLI configuration.
    config: FrontendConfig
    # gRPC client of the Triton engine model.
    triton: TritonClient
    # The model's tokenizer and chat template.
    templater: ChatTemplater
    # Prometheus collectors.
    metrics: FrontendMetrics
    # Unix time the server started: `created` of the model cards.
    started: int
    # The engine's context length once Triton has told it (max_model_len below).
    _engine_max_model_len: int | None = field(default=None, init=False, repr=False)

    async def max_model_len(self) -> int | None:
        """The context length requests are checked against and /v1/models reports: --max-model-len when
        given, else the engine's own, resolved as the engine resolves it (the llm model's max_model_len
        parameter, else the checkpoint's max_position_embeddings), asked of Triton once it answers. None
        until then: the engine alone checks."""
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        if self._engine_max_model_len is None:
            parameters = await self.triton.model_parameters(self.config.triton_timeout_s)
            if parameters is not None:
                configured = parameters.get("max_model_len", "").strip()
                self._engine_max_model_len = int(configured) if configured else checkpoint_context_length(self.config.model)
        return self._engine_max_model_len

    def check_model(self, model: str | None) -> str:
        """The canonical served name for a request's `model` (None: the default); 404 for unknown ones."""
        if model is None or model == "":
            return self.config.model_name
        if model not in self.config.served_model_names:
            raise model_not_found(model)
        return model

    @property
    def system_fingerprint(self) -> str:
        return f"tritonllm-{self.config.triton_model}"


def unix_now() -> int:
    return int(time.time())


def checkpoint_context_length(model_dir: Path) -> int | None:
    """A Hugging Face checkpoint's max_position_embeddings (its text model's, for one with a text_config),
    None where its config.json does not say."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    length = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    return int(length) if length else None

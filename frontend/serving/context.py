"""What every handler shares: configuration, the Triton client, the tokenizer and the metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from frontend.config import FrontendConfig
from frontend.errors import model_not_found
from frontend.metrics import FrontendMetrics
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient

logger = logging.getLogger(__name__)


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
    # The engine's context length, once Triton has told it (max_model_len below); None inside means it
    # could not be told.
    _engine_max_model_len: tuple[int | None] | None = field(default=None, init=False, repr=False)

    async def max_model_len(self) -> int | None:
        """The context length requests are checked against and /v1/models reports: --max-model-len when
        given, else the engine's own (engine_context_length), asked of Triton once it answers. None until
        then, or where it cannot be told: the engine alone checks."""
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        if self._engine_max_model_len is None:
            parameters = await self.triton.model_parameters(self.config.triton_timeout_s)
            if parameters is None:
                return None
            length = await asyncio.to_thread(engine_context_length, parameters, self.config.model)
            self._engine_max_model_len = (length,)
        return self._engine_max_model_len[0]

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


def engine_context_length(parameters: dict[str, str], frontend_model: Path) -> int | None:
    """The context length the engine resolves from its llm model's `parameters`: max_model_len, else the
    max_position_embeddings of the checkpoint it serves (its `model` parameter where that directory is
    visible here, else the frontend's own --model). None where neither says, or max_model_len is no
    integer (the engine refuses to load then)."""
    configured = parameters.get("max_model_len", "").strip()
    if configured:
        try:
            return int(configured)
        except ValueError:
            logger.warning("the engine model's max_model_len %r is not an integer", configured)
            return None
    served = Path(parameters.get("model", "")).expanduser()
    return checkpoint_context_length(served if served.is_absolute() and served.is_dir() else frontend_model)


def checkpoint_context_length(model_dir: Path) -> int | None:
    """A Hugging Face checkpoint's max_position_embeddings (its text model's, for one with a text_config),
    None where its config.json does not say."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    length = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return int(length) if isinstance(length, int) and length > 0 else None

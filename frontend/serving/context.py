"""What every handler shares: configuration, the Triton client, the tokenizer and the metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from frontend.checkpoint import read_checkpoint_config
from frontend.config import FrontendConfig
from frontend.errors import model_not_found
from frontend.metrics import FrontendMetrics
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A request's model: the name its response echoes and the LoRA adapter that serves it."""

    # The served model name or the adapter's name, as the response's `model` field reports it.
    name: str
    # The llm model's adapter (a name of its lora_modules) that serves the request; None: the base model.
    lora_name: str | None = None
    # The directory of an adapter loaded at run time (/v1/load_lora_adapter), sent with each request so
    # that whichever engine instance serves it can load it; None for the base model and configured ones.
    lora_path: str | None = None


@dataclass(frozen=True)
class RuntimeAdapter:
    """An adapter loaded through /v1/load_lora_adapter."""

    # Its PEFT directory, as the engine's host sees it.
    path: str
    # The name the engine knows this load by: the client's name and a tag of its own, so that a load of
    # the same name again (load_inplace, or unload then load, even of the same directory: a retrained
    # adapter written in place) reads the files afresh beside the old load, which serves the requests
    # already sent with it until they end.
    engine_name: str


@dataclass(frozen=True)
class EngineModel:
    """What the frontend reads from the llm model's `parameters` (Triton's get_model_config)."""

    # The engine's context length (engine_context_length); None where it cannot be told.
    max_model_len: int | None
    # LoRA adapter name -> directory as configured (engine_lora_modules), in the configured order.
    lora_modules: dict[str, str]
    # Whether requests may bring adapters by directory (allow_runtime_lora_updating).
    runtime_lora: bool = False


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
    # Adapters loaded through /v1/load_lora_adapter, by the name clients use (this frontend's, as in vLLM's
    # server: lost when it stops).
    runtime_adapters: dict[str, RuntimeAdapter] = field(default_factory=dict)
    # What the llm model's parameters say, once Triton has told them (_engine_model).
    _engine: EngineModel | None = field(default=None, init=False, repr=False)

    async def _engine_model(self) -> EngineModel | None:
        """The llm model's parameters as the frontend reads them, asked of Triton once it answers (they are
        fixed while it runs); None until then, asked again next time."""
        if self._engine is None:
            parameters = await self.triton.model_parameters(self.config.triton_timeout_s)
            if parameters is None:
                return None
            length = await asyncio.to_thread(engine_context_length, parameters, self.config.model)
            runtime_lora = parameters.get("allow_runtime_lora_updating", "").strip().lower() in ("1", "true", "yes")
            self._engine = EngineModel(length, engine_lora_modules(parameters), runtime_lora)
        return self._engine

    async def max_model_len(self) -> int | None:
        """The context length requests are checked against and /v1/models reports: --max-model-len when
        given, else the engine's own (engine_context_length), asked of Triton once it answers. None until
        then, or where it cannot be told: the engine alone checks."""
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        engine = await self._engine_model()
        return None if engine is None else engine.max_model_len

    async def lora_modules(self) -> dict[str, str]:
        """The LoRA adapters the engine serves, name -> directory: those its llm model configures (none while
        Triton cannot say), then those loaded at run time."""
        engine = await self._engine_model()
        runtime = {name: adapter.path for name, adapter in self.runtime_adapters.items()}
        return {**({} if engine is None else engine.lora_modules), **runtime}

    async def runtime_lora(self) -> bool:
        """Whether the engine loads adapters requests bring (False while Triton cannot say)."""
        engine = await self._engine_model()
        return engine is not None and engine.runtime_lora

    async def resolve_model(self, model: str | None) -> ServedModel:
        """What a request's `model` names (None or "": the default served name); 404 for unknown ones. A
        served name wins over an adapter of the same name. While Triton cannot be asked only the served
        names are known: an adapter's name is a 404 then, and Triton is asked again on the next request."""
        if not model:
            return ServedModel(self.config.model_name)
        if model in self.config.served_model_names:
            return ServedModel(model)
        if model in self.runtime_adapters:
            adapter = self.runtime_adapters[model]
            return ServedModel(model, lora_name=adapter.engine_name, lora_path=adapter.path)
        if model in await self.lora_modules():
            return ServedModel(model, lora_name=model)
        raise model_not_found(model)

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


def engine_lora_modules(parameters: dict[str, str]) -> dict[str, str]:
    """The LoRA adapters of the llm model's `lora_modules` parameter (a JSON object of name -> directory,
    vllm_backend's multi_lora.json), read here without the engine (which validates them and would refuse to
    load a bad value). Empty where it is empty or absent, or not such an object."""
    text = parameters.get("lora_modules", "").strip()
    if not text:
        return {}
    try:
        modules = json.loads(text)
    except ValueError:
        modules = None
    if not isinstance(modules, dict) or not all(isinstance(path, str) for path in modules.values()):
        logger.warning("the engine model's lora_modules %r is not a JSON object of names and directories", text)
        return {}
    return modules


def checkpoint_context_length(model_dir: Path) -> int | None:
    """A Hugging Face checkpoint's max_position_embeddings (its text model's, for one with a text_config),
    None where its config.json does not say."""
    config = read_checkpoint_config(model_dir)
    if config is None:
        return None
    length = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return int(length) if isinstance(length, int) and length > 0 else None

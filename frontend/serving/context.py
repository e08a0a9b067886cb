"""What every handler shares: configuration, the Triton client, the tokenizer and the metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

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

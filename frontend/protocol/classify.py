"""/classify: vLLM's ClassificationRequest (its completion form, `input`, and chat form, `messages`, in one
model) and ClassificationResponse, for a sequence classifier."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from frontend.protocol.embeddings import EmbeddingUsage, InputsRequest


class ClassificationRequest(InputsRequest):
    # vLLM: apply the activation to the logits (softmax, or sigmoid for one label); false answers the raw
    # logits as `probs`. None: true.
    use_activation: bool | None = None


class ClassificationData(BaseModel):
    # The input's position in the request.
    index: int
    # The most probable class's label (config.json's id2label).
    label: str
    # One per class: its probability (or its raw logit under use_activation false).
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    # As vLLM's: "classify-<request id>".
    id: str
    object: Literal["list"] = "list"
    # Unix time of the answer.
    created: int
    model: str
    # One per input, in input order.
    data: list[ClassificationData]
    usage: EmbeddingUsage

"""vLLM's /classify for a sequence classifier: each input one engine request through the shared pooling step
(pooling.pool_inputs), whose pooled output is the classification head's logits of the input's last token;
answered with vLLM's activation of them (softmax over the classes, sigmoid for one label) and the most probable
class's label. A generative model has no classes: it is refused, as vLLM refuses it."""

from __future__ import annotations

import time

import numpy as np

from frontend.classifier import activation
from frontend.errors import bad_request
from frontend.protocol.classify import ClassificationData, ClassificationRequest, ClassificationResponse
from frontend.protocol.embeddings import EmbeddingUsage
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.pooling import pool_inputs, record_pooling

ENDPOINT = "/classify"


class ClassifyHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, request: ClassificationRequest, request_id: str) -> ClassificationResponse:
        arrival = time.monotonic()
        served = await self.ctx.resolve_model(request.model)
        classifier = self.ctx.config.classifier
        if classifier is None:
            raise bad_request(
                "The model does not support the Classification API: it is a generative model, not a sequence "
                "classifier (*ForSequenceClassification)"
            )
        pooled = await pool_inputs(self.ctx, request, served, request.pooling_parameters(), request_id)
        data = []
        for index, embedding in enumerate(pooled.embeddings):
            probs = embedding.vector if request.use_activation is False else activation(embedding.vector)
            data.append(
                ClassificationData(
                    index=index,
                    # As vLLM picks it: the largest probability's class (the largest logit's, unactivated).
                    label=classifier.labels[int(np.argmax(probs))],
                    probs=probs.tolist(),
                    num_classes=probs.size,
                )
            )
        record_pooling(self.ctx, ENDPOINT, arrival, pooled.input_tokens)
        return ClassificationResponse(
            id=request_id,
            created=unix_now(),
            model=served.name,
            data=data,
            usage=EmbeddingUsage.of(pooled.prompt_tokens),
        )

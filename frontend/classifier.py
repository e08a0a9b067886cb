"""A sequence classifier as the frontend serves it: a *ForSequenceClassification checkpoint (reward models,
classifiers, cross-encoder rerankers), told by its config.json beside the tokenizer. The engine answers such a
model's pooling requests with its head's raw logits; the activation vLLM applies to them is here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frontend.checkpoint import read_checkpoint_config

ARCHITECTURE_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class Classifier:
    """The classes of a sequence classifier's head."""

    # config.json's architectures[0], e.g. "Qwen3ForSequenceClassification".
    architecture: str
    # Each class's label, by index: config.json's id2label, transformers' LABEL_<i> where it names none
    # (transformers leaves id2label out of config.json for its default of two classes).
    labels: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def read_classifier(model_dir: Path) -> Classifier | None:
    """The checkpoint's classifier; None for a generative model, or where config.json cannot be read (the
    engine, which reads the same file, is then the one to say what the model is)."""
    config = read_checkpoint_config(model_dir)
    if config is None:
        return None
    architectures = config.get("architectures") or [""]
    if not str(architectures[0]).endswith(ARCHITECTURE_SUFFIX):
        return None
    # The count as transformers (and the engine) take it: id2label's entries, else num_labels, else two.
    id2label = config.get("id2label") or {}
    count = len(id2label) if id2label else int(config.get("num_labels") or 2)
    labels = tuple(str(id2label.get(str(index), f"LABEL_{index}")) for index in range(count))
    return Classifier(str(architectures[0]), labels)


def activation(logits: np.ndarray) -> np.ndarray:
    """vLLM's default activation of a classifier's logits, in float64: softmax over the classes, or the sigmoid
    of a one-label model's single logit (a reward or relevance score in (0, 1))."""
    values = logits.astype(np.float64)
    if values.size == 1:
        return 1.0 / (1.0 + np.exp(-values))
    exponentials = np.exp(values - values.max())
    return exponentials / exponentials.sum()

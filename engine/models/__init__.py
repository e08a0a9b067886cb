"""Model definitions over the paged KV cache, and loading them from Hugging Face checkpoints.

Llama, Mistral, Qwen2 and Qwen3 share one `CausalLM` built from shared blocks (`layers.py`); they differ
only by the explicit `ArchitectureFlags` the registry (`registry.py`) reads for each `architectures`
entry of config.json. Adding a family that fits those blocks is one registry entry; anything else
(a new norm, activation or attention variant) belongs in the blocks behind a new flag. Their
*ForSequenceClassification checkpoints are the same model with a classification head (`score`) in place of
the LM head.
"""

from engine.models.causal_lm import CausalLM
from engine.models.loader import load_model, read_spec
from engine.models.registry import ARCHITECTURES
from engine.models.rope import RopeConfig
from engine.models.spec import ArchitectureFlags, ModelSpec

__all__ = ["ARCHITECTURES", "ArchitectureFlags", "CausalLM", "ModelSpec", "RopeConfig", "load_model", "read_spec"]

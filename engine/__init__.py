"""The inference engine: continuous batching over a paged KV cache, usable as a library.

Flow of a request: LLMEngine.add_request -> Scheduler (token budget, preemption) with the
BlockManager (paged KV, prefix cache) -> ModelRunner (one varlen batch, model, Sampler) ->
OutputProcessor (stop checks, incremental detokenization) -> RequestOutput deltas.
AsyncEngine runs that loop in a thread for servers.
"""

from engine.async_engine import AsyncEngine, RequestStream
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.outputs import (
    CompletedRequest,
    EngineDeadError,
    EngineOverloadedError,
    EngineStats,
    InvalidRequestError,
    RequestOutput,
    TokenLogprobs,
    merge_outputs,
)
from engine.pooling import PoolingParams
from engine.sampling_params import SamplingParams

__all__ = [
    "AsyncEngine",
    "CompletedRequest",
    "EngineConfig",
    "EngineStats",
    "EngineDeadError",
    "EngineOverloadedError",
    "InvalidRequestError",
    "LLMEngine",
    "PoolingParams",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "SpeculativeConfig",
    "TokenLogprobs",
    "merge_outputs",
]

"""OpenAI-compatible HTTP frontend that reaches the engine only through Triton over gRPC streaming.

Layers, each calling only the next one down:
  * `app.py`, `middleware.py`, `routes.py`: FastAPI wiring, OpenAI-shaped errors, API keys, body limit,
    request ids, client-disconnect cancellation. No request logic.
  * `protocol/`: pydantic request/response models, one module per API family.
  * `serving/`: one handler per endpoint family (chat, completions, models, tokenize), turning requests
    into engine model inputs and Triton responses into OpenAI answers or SSE streams.
  * `triton_client.py`: the only module that touches tritonclient.
  * `engine_metrics.py`: reads the llm model's metrics from Triton's metrics port (plain HTTP) for /metrics.
Pure helpers beside them: `templating.py` (tokenizer and chat template), `tool_parsers/` and
`reasoning.py` (incremental output parsing), `metrics.py`, `config.py` (the one typed configuration).
Never imports `engine/`, `kernels/` or `model_repository/`.
"""

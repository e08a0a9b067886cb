"""OpenAI-compatible HTTP frontend that reaches the engine only through Triton over gRPC streaming."""

"""Pydantic models of the OpenAI API (and vLLM's extensions), one module per API family."""

"""Structured outputs through xgrammar: constraints, the compile cache, per-request matchers, bitmasks.

Only the parameters are imported here (SamplingParams needs them); the engine imports the manager
from its module.
"""

from engine.structured_output.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]

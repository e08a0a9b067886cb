"""Numeric kernels for the engine: Triton-language kernels for CUDA, each beside the torch reference that is
both the CPU path and the test oracle. `kernels.ops` is the only module the engine calls. This package imports
nothing else of ours."""

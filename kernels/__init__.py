"""Numeric kernels for the engine: Triton-language kernels for CUDA, each beside the torch reference that is
both the CPU path and the test oracle, and C++ kernels (kernels/native, built at setup) that take over the
float32 CPU path where they are built. `kernels.ops` is the only module the engine calls. This package imports
nothing else of ours."""

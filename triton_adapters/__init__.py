"""Pure helpers shared by the Triton Python models in model_repository/.

Nothing here imports triton_python_backend_utils: the models read their tensors into plain numpy
arrays and hand them over, so this translation logic is unit-testable outside the stub.
"""

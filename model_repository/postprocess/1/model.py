"""postprocess: the llm step's per-response outputs -> the ensemble's TensorRT-LLM-style outputs.

The engine detokenizes incrementally (it must, to stop on stop strings within the step they appear
and to hold back text that could still become one), so every llm response already carries an exact
text delta. This step therefore needs no per-request state: it prepends the prompt when the client
asked for it (`exclude_input_in_output=false`: llm then sends `prompt_text`) and forwards the token
accounting and whichever optional outputs the response carries.

Cancellation relay: Triton 2.51 marks the ensemble steps scheduled after a client cancelled as
cancelled, but never the llm step already running. Here each such response is seen, so postprocess
asks llm (a BLS request carrying only `abort_request_id`) to abort the engine request, which frees
its sequence and KV blocks at once instead of after max_tokens.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_adapters.server_watch import exit_with_server

# The llm outputs the ensemble returns, but those turned into text_output (stop_reason is the OpenAI
# frontend's and stays out); the optional ones pass through when present.
PASS_THROUGH = (
    "output_token_ids",
    "num_input_tokens",
    "num_output_tokens",
    "num_cached_tokens",
    "finish_reason",
    "sequence_index",
    "cum_log_probs",
    "cumulative_logprob",
    "output_log_probs",
    "top_log_probs",
    "prompt_log_probs",
)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        exit_with_server()

    def execute(self, requests: list) -> list:
        return [self._format(request) for request in requests]

    def _format(self, request) -> pb_utils.InferenceResponse:
        # One pass over the inputs: get_input_tensor_by_name scans them all on every call.
        inputs = {tensor.name(): tensor for tensor in request.inputs()}
        if request.is_cancelled():
            self._relay_abort(inputs["request_id"].as_numpy())
            error = pb_utils.TritonError("request cancelled by the client", pb_utils.TritonError.CANCELLED)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        delta = inputs["text_delta"].as_numpy().reshape(-1)[0]
        prompt = inputs.get("prompt_text")
        if prompt is not None:
            delta = prompt.as_numpy().reshape(-1)[0] + delta
        text = pb_utils.Tensor("text_output", np.array([delta], dtype=np.object_))
        # The pass-through inputs carry the outputs' names: they go back as they came, with no copy.
        passed = (inputs[name] for name in PASS_THROUGH if name in inputs)
        return pb_utils.InferenceResponse(output_tensors=[text, *passed])

    @staticmethod
    def _relay_abort(request_id: np.ndarray) -> None:
        abort = pb_utils.InferenceRequest(
            model_name="llm",
            inputs=[pb_utils.Tensor("abort_request_id", request_id)],
            requested_output_names=[],
        )
        for response in abort.exec(decoupled=True):
            if response.has_error():
                pb_utils.Logger.log_warn(f"abort relay failed: {response.error().message()}")

"""Small helpers to call the model repository over gRPC streaming the way Triton clients do."""

from __future__ import annotations

import json
import queue
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

# ensemble input name -> numpy dtype, for the inputs the tests send.
INPUT_DTYPES: dict[str, Any] = {
    "text_input": np.object_,
    "max_tokens": np.int32,
    "stream": np.bool_,
    "sampling_parameters": np.object_,
    "pooling_parameters": np.object_,
    "temperature": np.float32,
    "top_p": np.float32,
    "top_k": np.int32,
    "seed": np.uint64,
    "ignore_eos": np.bool_,
    "stop_words": np.object_,
    "min_tokens": np.int32,
    "exclude_input_in_output": np.bool_,
    "add_special_tokens": np.bool_,
    "return_log_probs": np.bool_,
    "return_finish_reason": np.bool_,
    "return_num_output_tokens": np.bool_,
    "return_cumulative_logprob": np.bool_,
    "frequency_penalty": np.float32,
    "abort_request_id": np.object_,
    "prompt_token_ids": np.int32,
    "input_ids": np.int32,
    "return_unchanged_outputs": np.bool_,
    "guided_decoding_guide_type": np.object_,
    "guided_decoding_guide": np.object_,
    "lora_name": np.object_,
}


def make_inputs(values: dict[str, Any]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict):  # sampling_parameters, pooling_parameters: JSON objects
            items = [json.dumps(value)]
        dtype = INPUT_DTYPES[name]
        if dtype is np.object_:
            array = np.array([str(item).encode("utf-8") for item in items], dtype=np.object_)
        else:
            array = np.array(items, dtype=dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclass
class StreamResult:
    """Everything one streamed request produced."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    # Names of the outputs each response carried, in order.
    output_names: list[set[str]] = field(default_factory=list)
    error: InferenceServerException | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)


def generate(
    url: str, values: dict[str, Any], model: str = "ensemble", timeout: float = 120.0
) -> StreamResult:
    """Send one request over a gRPC stream and collect its responses until the final one."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, make_inputs(values), enable_empty_final_response=True)
        result = StreamResult()
        while True:
            response, error = responses.get(timeout=timeout)
            if error is not None:
                result.error = error
                return result
            final = response.get_response().parameters["triton_final_response"].bool_param
            text = response.as_numpy("text_output")
            if text is not None:
                collect(result, response)
            if final:
                return result
    finally:
        client.stop_stream()
        client.close()


def stream_outputs(
    url: str, values: dict[str, Any], model: str, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Every response of one streamed request as output name -> flat array, until the final one."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, make_inputs(values), enable_empty_final_response=True)
        outputs = []
        while True:
            response, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            names = [output.name for output in response.get_response().outputs]
            if names:
                outputs.append({name: response.as_numpy(name).reshape(-1) for name in names})
            if response.get_response().parameters["triton_final_response"].bool_param:
                return outputs
    finally:
        client.stop_stream()
        client.close()


def collect(result: StreamResult, response: Any) -> None:
    result.texts.append(response.as_numpy("text_output").reshape(-1)[0].decode("utf-8"))
    result.token_ids.extend(int(token) for token in response.as_numpy("output_token_ids").reshape(-1))
    result.finish_reason = response.as_numpy("finish_reason").reshape(-1)[0].decode("utf-8")
    result.num_input_tokens = int(response.as_numpy("num_input_tokens")[0])
    result.num_output_tokens = int(response.as_numpy("num_output_tokens")[0])
    result.num_cached_tokens = int(response.as_numpy("num_cached_tokens")[0])
    result.output_names.append({output.name for output in response.get_response().outputs})


def scrape_metric(metrics_text: str, name: str) -> float:
    """Sum of every sample of one metric name in Prometheus text format."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total

"""preprocess: prompt text -> token ids, with the context-length check done before the engine."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from triton_adapters.model_parameters import parse_model_parameters, resolve_model_path
from triton_adapters.server_watch import exit_with_server


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        exit_with_server()
        parameters = parse_model_parameters(args["model_config"])
        model_path = resolve_model_path(parameters["model"], args["model_repository"])
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_model_len = int(parameters["max_model_len"])
        self.vocab_size = len(self.tokenizer)

    def execute(self, requests: list) -> list:
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request) -> pb_utils.InferenceResponse:
        ids_tensor = pb_utils.get_input_tensor_by_name(request, "prompt_token_ids")
        if ids_tensor is not None:
            token_ids = [int(token) for token in ids_tensor.as_numpy().reshape(-1)]
            if any(token < 0 or token >= self.vocab_size for token in token_ids):
                return _error(f"prompt_token_ids must be in [0, {self.vocab_size})")
        else:
            text_tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
            special_tensor = pb_utils.get_input_tensor_by_name(request, "add_special_tokens")
            try:
                text = text_tensor.as_numpy().reshape(-1)[0].decode("utf-8")
            except UnicodeDecodeError:
                return _error("text_input is not valid UTF-8")
            add_special_tokens = bool(special_tensor.as_numpy().reshape(-1)[0]) if special_tensor else True
            token_ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if not token_ids:
            return _error("the prompt is empty: it must contain at least one token")
        if len(token_ids) >= self.max_model_len:
            return _error(
                f"the prompt has {len(token_ids)} tokens, but max_model_len is {self.max_model_len}: "
                "shorten the prompt to leave room for at least one generated token"
            )
        ids = np.asarray(token_ids, dtype=np.int32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("input_ids", ids)])


def _error(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

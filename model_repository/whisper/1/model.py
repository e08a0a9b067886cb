"""whisper: speech recognition with faster-whisper, streaming one response per segment.

execute() handles a request at a time per instance (CTranslate2 already uses every core it is given);
more instances in the profile serve more requests at once. Segments are sent one step behind, so the
last real response carries FINAL (aio gRPC clients cannot ask for empty final responses).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from faster_whisper import WhisperModel

from triton_adapters.model_parameters import parse_model_parameters, resolve_model_path
from triton_adapters.server_watch import exit_with_server
from triton_adapters.speech import AudioError, decode_audio, parse_speech_request, segment_json

INPUT_NAMES = ("audio", "task", "language", "prompt", "temperature", "word_timestamps")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        exit_with_server()
        parameters = parse_model_parameters(args["model_config"])
        # Always a path: a size name such as "base" would make faster-whisper download from a hub.
        model_path = resolve_model_path(parameters["model"], args["model_repository"])
        self.model = WhisperModel(
            model_path,
            device=parameters.get("device", "cpu"),
            compute_type=parameters.get("compute_type", "int8"),
        )
        self.max_audio_bytes = int(parameters.get("max_audio_bytes", str(25 << 20)))
        self.max_audio_seconds = float(parameters.get("max_audio_seconds", "1800"))

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._recognize(request, sender)
            except (AudioError, ValueError) as error:
                _send(
                    sender,
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error))),
                )
            except Exception as error:  # keep the instance alive for the next request
                message = f"speech recognition failed: {type(error).__name__}: {error}"
                _send(
                    sender, pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                )
        return None

    def _recognize(self, request, sender) -> None:
        inputs = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        speech = parse_speech_request(inputs, self.max_audio_bytes)
        samples = decode_audio(speech.audio, self.max_audio_seconds)
        options = {"temperature": speech.temperature} if speech.temperature is not None else {}
        segments, info = self.model.transcribe(
            samples,
            task=speech.task,
            language=speech.language,
            initial_prompt=speech.prompt,
            word_timestamps=speech.word_timestamps,
            **options,
        )
        held: str | None = None
        for segment in segments:
            if sender.is_cancelled():
                error = pb_utils.TritonError(
                    "request cancelled by the client", pb_utils.TritonError.CANCELLED
                )
                _send(sender, pb_utils.InferenceResponse(output_tensors=[], error=error))
                return
            if held is not None:
                sender.send(_response(held, info), flags=0)
            held = segment_json(segment)
        # Silence yields no segment: the final response then carries an empty JSON object.
        _send(sender, _response(held if held is not None else json.dumps({}), info))


def _response(segment: str, info) -> pb_utils.InferenceResponse:
    def text(value: str) -> np.ndarray:
        return np.array([value.encode("utf-8")], dtype=np.object_)

    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("segment", text(segment)),
            pb_utils.Tensor("language", text(info.language)),
            pb_utils.Tensor("language_probability", np.array([info.language_probability], dtype=np.float32)),
            pb_utils.Tensor("duration", np.array([info.duration], dtype=np.float32)),
        ]
    )


def _send(sender, response) -> None:
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

"""llm: the continuous-batching engine behind Triton's decoupled Python backend.

Threads (STYLE.md, "Serving"):
  * Triton's thread calls execute(): it parses each request, registers it and submits it to the
    engine, then returns None at once;
  * the engine loop thread (inside AsyncEngine) steps the batch and pushes every RequestOutput onto
    one queue;
  * the sender thread drains that queue into Triton responses (one per engine step for streamed
    requests, one in all otherwise, and one `embedding` for an embedding request; the last carries
    FINAL), polls `is_cancelled()` to abort requests in the engine, and publishes engine metrics.
finalize() aborts what is left, lets the sender end every request, and stops the engine.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from engine import AsyncEngine, EngineDeadError, EngineOverloadedError, RequestOutput, merge_outputs
from triton_adapters.embedding import embedding_tensors
from triton_adapters.engine_settings import engine_config
from triton_adapters.generation_request import parse_generation_request
from triton_adapters.llm_metrics import LLMMetrics
from triton_adapters.model_parameters import parse_model_parameters
from triton_adapters.sequence_outputs import sequence_tensors
from triton_adapters.server_watch import exit_with_server

CANCEL_POLL_SECONDS = 0.1
# Python's GIL switch interval for this process (default 5 ms). The engine thread gives the GIL up for
# every torch op and needs it back right after; while the sender thread builds responses, the default
# made each of those returns wait up to 5 ms. At 64 concurrent streams: 77.7 -> 83.4 output tok/s.
GIL_SWITCH_SECONDS = 0.0002
STATS_PERIOD_SECONDS = 0.5


@dataclass
class ActiveRequest:
    """A request between execute() and its FINAL response; owned by the sender thread once registered."""

    # Engine-side id (unique even if clients reuse Triton request ids).
    request_id: str
    # The Triton request id the client chose ("" if none): an `abort_request_id` may name it.
    client_request_id: str
    # Triton's response sender for this request.
    sender: Any
    # One response per engine step (True) or one response with everything (False).
    stream: bool
    # n > 1: every response names its sequence.
    parallel: bool
    # Prompt text to prepend to the first response ("" unless exclude_input_in_output is false).
    prompt_text: str
    # Monotonic arrival time, for time-to-first-token.
    arrival: float
    # Monotonic times of the first and the latest output carrying tokens, for the latency metrics.
    first_output: float | None = None
    last_output: float | None = None
    # Non-streamed requests accumulate each sequence's outputs here (by sequence index) until it ends.
    held: dict[int, RequestOutput] = field(default_factory=dict)
    # Set once the client cancelled, so the abort is sent to the engine only once.
    cancelled: bool = False
    # False: streamed responses between a sequence's first and last carry only the outputs that change.
    return_unchanged: bool = True
    # Sequence indices whose first response went out.
    started: set[int] = field(default_factory=set)
    # vllm_backend conventions (GenerationRequest): num_output_tokens per response; cumulative_logprob;
    # finish_reason "None" before the end.
    output_tokens_per_response: bool = False
    cumulative_logprob: bool = False
    unfinished_reason: str = ""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        exit_with_server()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("the llm model must use the decoupled transaction policy")
        self.input_names = [entry["name"] for entry in model_config["input"]]
        parameters = parse_model_parameters(args["model_config"])
        gpu_device_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        self.engine = AsyncEngine(engine_config(parameters, args["model_repository"], gpu_device_id))
        instance = f"{args['model_instance_name']} ({args['model_instance_kind']} device {args['model_instance_device_id']})"
        self.metrics = LLMMetrics(pb_utils, args["model_name"], args["model_version"], instance)
        self.outputs: queue.Queue[RequestOutput | None] = queue.Queue()
        self.active: dict[str, ActiveRequest] = {}
        self.active_lock = threading.Lock()
        self.sender_thread = threading.Thread(target=self._send_loop, name="llm-sender", daemon=True)
        self.sender_thread.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            self._submit(request)
        return None

    def finalize(self) -> None:
        with self.active_lock:
            pending = list(self.active)
        for request_id in pending:
            self.engine.abort(request_id)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with self.active_lock:
                if not self.active:
                    break
            time.sleep(0.01)
        self.outputs.put(None)
        self.sender_thread.join(timeout=5.0)
        self.engine.shutdown()
        # The stub of Triton 2.51 destroys this model after its own state, and a metric family destroyed
        # then writes to freed shared memory: a segfault in the log at every shutdown (python_backend#429,
        # fixed upstream). Destroyed here, they clear while the stub is whole.
        del self.metrics

    # -- execute() side ---------------------------------------------------------------------------

    def _submit(self, request) -> None:
        sender = request.get_response_sender()
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        if "abort_request_id" in inputs and "input_ids" not in inputs:
            # A cancellation relayed by postprocess or sent by a client that gave up (see config.pbtxt); the
            # frontend's health probe is one too, so it fails once the engine loop has stopped.
            self._abort(inputs["abort_request_id"].reshape(-1)[0].decode("utf-8"))
            if not self.engine.is_alive():
                _send_unavailable(sender, str(EngineDeadError()))
                return
            _send_final(sender, pb_utils.InferenceResponse(output_tensors=[]))
            return
        try:
            generation = parse_generation_request(inputs)
        except ValueError as error:
            _send_error(sender, str(error))
            return
        prompt_text = ""
        if not generation.exclude_input_in_output and not generation.stream:
            prompt_text = self.engine.tokenizer.decode(generation.prompt_token_ids)
        state = ActiveRequest(
            request_id=uuid.uuid4().hex,
            # Triton hands the ensemble's request id down to every step, so this is the client's id.
            client_request_id=request.request_id(),
            sender=sender,
            stream=generation.stream,
            parallel=generation.num_sequences > 1,
            prompt_text=prompt_text,
            arrival=time.monotonic(),
            return_unchanged=generation.return_unchanged_outputs,
            output_tokens_per_response=generation.output_tokens_per_response,
            cumulative_logprob=generation.cumulative_logprob,
            unfinished_reason=generation.unfinished_reason,
        )
        with self.active_lock:
            self.active[state.request_id] = state
        try:
            self.engine.submit(
                state.request_id,
                generation.prompt_token_ids,
                generation.params,
                priority=generation.priority,
                cache_salt=generation.cache_salt,
                lora_name=generation.lora_name,
                lora_path=generation.lora_path,
                on_output=self.outputs.put,
            )
        except ValueError as error:
            with self.active_lock:
                del self.active[state.request_id]
            _send_error(sender, str(error))
            return
        except (EngineOverloadedError, EngineDeadError) as error:
            with self.active_lock:
                del self.active[state.request_id]
            # UNAVAILABLE: gRPC clients see a retryable status; the frontend answers 429 + Retry-After for a
            # full queue, 503 for a stopped engine.
            _send_unavailable(sender, str(error))
            return

    def _abort(self, request_id: str) -> None:
        """Abort the engine request with this id, or every running request the client gave this id."""
        with self.active_lock:
            targets = [
                state.request_id
                for state in self.active.values()
                if request_id in (state.request_id, state.client_request_id)
            ]
        for target in targets:
            self.engine.abort(target)

    # -- sender thread ----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        next_cancel_check = next_stats = 0.0
        while True:
            try:
                output = self.outputs.get(timeout=CANCEL_POLL_SECONDS)
            except queue.Empty:
                output = None
            else:
                if output is None:
                    return
                self._deliver(output)
            now = time.monotonic()
            if now >= next_cancel_check:
                self._abort_cancelled()
                next_cancel_check = now + CANCEL_POLL_SECONDS
            if now >= next_stats:
                self.metrics.publish_stats(self.engine.stats())
                next_stats = now + STATS_PERIOD_SECONDS

    def _abort_cancelled(self) -> None:
        with self.active_lock:
            states = list(self.active.values())
        for state in states:
            if not state.cancelled and state.sender.is_cancelled():
                state.cancelled = True
                self.engine.abort(state.request_id)

    def _deliver(self, output: RequestOutput) -> None:
        with self.active_lock:
            state = self.active.get(output.request_id)
        if state is None:
            return
        if output.new_token_ids:
            now = time.monotonic()
            if state.first_output is None:
                state.first_output = now
                self.metrics.time_to_first_token.observe(now - state.arrival)
            state.last_output = now
        if output.finished:
            with self.active_lock:
                del self.active[output.request_id]
            self.metrics.count_finished(output.finish_reason or "abort")
            if state.first_output is not None and state.last_output is not None and output.num_output_tokens > 1:
                self.metrics.time_per_output_token.observe(
                    (state.last_output - state.first_output) / (output.num_output_tokens - 1)
                )
        if state.cancelled and output.finished:
            error = pb_utils.TritonError("request cancelled by the client", pb_utils.TritonError.CANCELLED)
            _send_final(state.sender, pb_utils.InferenceResponse(output_tensors=[], error=error))
            return
        error_message = getattr(output, "error", None)
        if error_message:
            # Every sequence of an n > 1 request fails at once; the last one's output ends the request.
            if output.finished:
                # A refusal is the request's fault (INVALID_ARG, a 400 at the frontend) or a moment's (UNAVAILABLE,
                # a 429 there: its message says the queue is full); anything else the engine's.
                if output.rejected == "busy":
                    _send_unavailable(state.sender, error_message)
                elif output.rejected == "invalid":
                    _send_error(state.sender, error_message)
                else:
                    _send_error(state.sender, f"engine error: {error_message}")
            return
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0
        if state.stream:
            state.sender.send(self._response(output, state), flags=flags)
            return
        held = state.held.pop(output.index, None)
        merged = output if held is None else merge_outputs(held, output)
        if output.finish_reason is None:
            state.held[output.index] = merged
            return
        # One response per sequence, sent when it ends; the request's last one carries FINAL.
        state.sender.send(self._response(merged, state), flags=flags)

    @staticmethod
    def _response(output: RequestOutput, state: ActiveRequest):
        """The response's tensors; those with nothing to say are left out (see sequence_outputs), and so
        are, when the client asked, those that stay the same between a sequence's first and last responses
        or follow from the tokens sent."""
        if output.embedding is not None:
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in embedding_tensors(output).items()]
            )

        def scalar(value: int) -> np.ndarray:
            return np.array([value], dtype=np.int32)

        def text(value: str) -> np.ndarray:
            return np.array([value.encode("utf-8")], dtype=np.object_)

        tensors = [
            pb_utils.Tensor("text_delta", text(output.text_delta)),
            pb_utils.Tensor("output_token_ids", np.asarray(output.new_token_ids, dtype=np.int32)),
        ]
        first = output.index not in state.started
        state.started.add(output.index)
        if state.output_tokens_per_response:
            tensors.append(pb_utils.Tensor("num_output_tokens", scalar(len(output.new_token_ids))))
        if state.cumulative_logprob:
            cumulative = np.array([output.cumulative_logprob or 0.0], dtype=np.float32)
            tensors.append(pb_utils.Tensor("cumulative_logprob", cumulative))
        # A lean stream's count between a sequence's first and last responses is the client's running sum of
        # output_token_ids: one tensor less on every streamed token.
        if state.return_unchanged or first or output.finish_reason is not None or output.finished:
            if not state.output_tokens_per_response:
                tensors.append(pb_utils.Tensor("num_output_tokens", scalar(output.num_output_tokens)))
            tensors += [
                pb_utils.Tensor("request_id", text(output.request_id)),
                pb_utils.Tensor("num_input_tokens", scalar(output.num_prompt_tokens)),
                pb_utils.Tensor("num_cached_tokens", scalar(output.num_cached_tokens)),
                pb_utils.Tensor("finish_reason", text(output.finish_reason or state.unfinished_reason)),
            ]
            if state.prompt_text:
                tensors.append(pb_utils.Tensor("prompt_text", text(state.prompt_text)))
            if output.finish_reason is not None and output.stop_reason is not None:
                tensors.append(pb_utils.Tensor("stop_reason", text(json.dumps(output.stop_reason))))
        tensors.extend(
            pb_utils.Tensor(name, array) for name, array in sequence_tensors(output, state.parallel).items()
        )
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _send_error(sender, message: str) -> None:
    _send_final(sender, pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))


def _send_unavailable(sender, message: str) -> None:
    error = pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE)
    _send_final(sender, pb_utils.InferenceResponse(output_tensors=[], error=error))


def _send_final(sender, response) -> None:
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

"""Stream interval (vLLM's --stream-interval and per-request `stream_interval`): several tokens per output.

A request streamed one token a step costs every hop after the engine a message per token (here: the Triton
response, tritonserver's gRPC message, the frontend's SSE chunk). On a CPU the engine shares its cores with
those hops, so a larger interval buys throughput at the price of burstier text. A sequence's first output
and its last (finish reason, abort, error) always go out at once; in between its outputs are merged until
they hold `interval` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import RequestOutput, merge_outputs


@dataclass
class _Coalesced:
    """One request whose interval is above 1."""

    interval: int
    # Merged outputs not sent yet, by sequence index.
    held: dict[int, RequestOutput] = field(default_factory=dict)


class StreamCoalescer:
    """Merges each request's outputs up to its stream interval; only the engine loop thread calls it."""

    def __init__(self, engine_interval: int) -> None:
        self.engine_interval = engine_interval
        self._requests: dict[str, _Coalesced] = {}

    def effective_interval(self, requested: int | None) -> int:
        """A request may raise the engine's interval, never lower it (vLLM's rule)."""
        return max(self.engine_interval, requested or 1)

    def add(self, request_id: str, requested: int | None) -> None:
        interval = self.effective_interval(requested)
        if interval > 1:
            self._requests[request_id] = _Coalesced(interval)
        else:  # an earlier request of this id whose final output never came through (a failed step) is gone
            self._requests.pop(request_id, None)

    def coalesce(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """The outputs to deliver now, in step order; the rest are held for a later step."""
        if not self._requests:
            return outputs
        ready = []
        for output in outputs:
            state = self._requests.get(output.request_id)
            if state is None:
                ready.append(output)
                continue
            held = state.held.pop(output.index, None)
            merged = output if held is None else merge_outputs(held, output)
            ends = merged.finish_reason is not None or merged.finished or merged.error is not None
            # Nothing of the sequence sent yet: the output holds every token it has (vLLM's first output).
            first = merged.num_output_tokens == len(merged.new_token_ids)
            if ends or first or len(merged.new_token_ids) >= state.interval:
                ready.append(merged)
            else:
                state.held[output.index] = merged
            if merged.finished:
                del self._requests[output.request_id]
        return ready

"""n > 1 and best_of: one client request fanned out into several sequences that share its prompt.

Only the first sequence is scheduled at first. When it samples its first token its prompt is fully
computed and its full blocks are published to the prefix cache, and only then do the other sequences
join the scheduler: they find every full prompt block there (ref counts shared, nothing copied) and
recompute only the partial last block, so the prompt is prefilled once (vLLM v1 fans out children the
same way; its prefix cache does the sharing). Without prefix caching they prefill separately.

With best_of > n, the sequences' outputs are held back and, once all are done, the n with the highest
cumulative logprob are released, renumbered 0..n-1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.outputs import RequestOutput, merge_outputs
from engine.request import Request
from engine.sampling_params import SamplingParams


def child_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sequence `index`'s parameters: one sequence each; a seeded request seeds sequence i with seed + i
    (vLLM's rule), so the sequences differ yet stay reproducible."""
    seed = params.seed + index if params.seed is not None else None
    return dataclasses.replace(params, n=1, best_of=None, seed=seed)


@dataclass
class SequenceGroup:
    """The sequences of one client request; only the engine thread touches it."""

    # The client's request id (every output carries it).
    request_id: str
    # The client's parameters (n, best_of).
    params: SamplingParams
    # Every sequence, index order.
    sequences: list[Request]
    # Sequences not yet handed to the scheduler: they wait for sequence 0's prompt.
    pending: list[Request] = field(default_factory=list)
    # Request ids of sequences still running.
    unfinished: set[str] = field(default_factory=set)
    # best_of > n: each sequence's outputs merged so far, by sequence index.
    held: dict[int, RequestOutput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = list(self.sequences[1:])
        self.unfinished = {sequence.request_id for sequence in self.sequences}

    @property
    def holds_outputs(self) -> bool:
        return self.params.best_of is not None and self.params.best_of > self.params.n

    def release_pending(self) -> list[Request]:
        """The waiting sequences, now that sequence 0's prompt blocks are cached; copies its prompt logprobs."""
        released, self.pending = self.pending, []
        first = self.sequences[0]
        for sequence in released:
            sequence.prompt_logprobs = list(first.prompt_logprobs)
        return released

    def route(self, sequence: Request, output: RequestOutput) -> list[RequestOutput]:
        """What the client sees of one sequence's output: now, later (best_of), and when it is the last."""
        if output.finish_reason is not None:
            self.unfinished.discard(sequence.request_id)
        output.finished = not self.unfinished
        if not self.holds_outputs:
            return [output]
        held = self.held.get(sequence.index)
        self.held[sequence.index] = output if held is None else merge_outputs(held, output)
        if self.unfinished:
            return []
        return self._best()

    def abort(self, aborted: list[RequestOutput]) -> list[RequestOutput]:
        """Final outputs after an abort, given one abort output per unfinished sequence."""
        self.unfinished.clear()
        if self.holds_outputs:
            # Nothing was shown yet: the client gets its n sequences, ended by the abort.
            aborted = [dataclasses.replace(aborted[0], index=index) for index in range(self.params.n)]
        for output in aborted:
            output.finished = False
        if aborted:
            aborted[-1].finished = True
        return aborted

    def _best(self) -> list[RequestOutput]:
        ranked = sorted(
            self.held.values(), key=lambda output: output.cumulative_logprob or 0.0, reverse=True
        )[: self.params.n]
        for index, output in enumerate(ranked):
            output.index = index
            output.finished = index == len(ranked) - 1
        return ranked

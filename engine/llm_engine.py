"""LLMEngine: requests in, one step at a time, RequestOutputs out. Single-threaded; see AsyncEngine."""

from __future__ import annotations

import itertools
import logging
import time

import torch
from transformers import AutoTokenizer

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.model_runner import ModelRunner, RunnerOutput
from engine.output_processor import OutputProcessor
from engine.outputs import CompletedRequest, EngineStats, InvalidRequestError, RequestOutput
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput

logger = logging.getLogger(__name__)


class LLMEngine:
    """Continuous batching over a paged KV cache: add_request, then call step() until done."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        spec = self.runner.spec
        self.max_model_len = config.max_model_len or spec.max_position_embeddings
        if self.max_model_len > spec.max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                f"{spec.max_position_embeddings}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        eos = set(spec.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.outputs = OutputProcessor(self.tokenizer, frozenset(eos), self.max_model_len)
        self._requests: dict[str, Request] = {}
        # Final outputs of aborted requests, returned by the next step().
        self._pending: list[RequestOutput] = []
        self._arrivals = itertools.count()
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0

    # -- requests -----------------------------------------------------------------------------------

    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError for a request the engine can never serve (no state is touched)."""
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty")
        if num_prompt >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {num_prompt} tokens; max_model_len is {self.max_model_len}, so at most "
                f"{self.max_model_len - 1} prompt tokens leave room for one generated token"
            )
        if params.max_tokens is not None and num_prompt + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {num_prompt} tokens and max_tokens is {params.max_tokens}: together "
                f"{num_prompt + params.max_tokens} exceed max_model_len {self.max_model_len}"
            )
        vocab_size = self.runner.spec.vocab_size
        bad = [token for token in prompt_token_ids if not (isinstance(token, int) and 0 <= token < vocab_size)]
        if bad:
            raise InvalidRequestError(f"prompt token ids out of range [0, {vocab_size}): {bad[:8]}")
        longest = min(num_prompt + (params.max_tokens or self.max_model_len), self.max_model_len)
        if self.block_manager.blocks_needed(longest) > self.block_manager.num_blocks:
            raise InvalidRequestError(
                f"a request of up to {longest} tokens needs {self.block_manager.blocks_needed(longest)} KV blocks; "
                f"the pool has {self.block_manager.num_blocks}"
            )

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> None:
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self.validate_request(prompt_token_ids, params)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.runner.device)
            generator.manual_seed(params.seed)
        suppressed = tuple(self.outputs.eos_token_ids) if not params.ignore_eos else ()
        request = Request(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            priority=priority,
            arrival_seq=next(self._arrivals),
            arrival_time=time.monotonic(),
            cache_salt=cache_salt,
            generator=generator,
            min_tokens_suppressed=tuple(dict.fromkeys(suppressed + tuple(params.stop_token_ids))),
        )
        self._requests[request_id] = request
        self.outputs.add(request)
        self.scheduler.add(request)
        self._prompt_tokens_total += len(prompt_token_ids)

    def abort_request(self, request_id: str, error: str | None = None) -> None:
        """Free the request's blocks now; its final output (finish_reason "abort", with `error` if
        given) comes with the next step. Unknown or finished ids are ignored."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        self.scheduler.remove(request)
        self._pending.append(self.outputs.finish(request, "abort", error))

    def unfinished_request_ids(self) -> list[str]:
        return list(self._requests)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests) or bool(self._pending)

    # -- the loop -----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, turn sampled tokens into outputs."""
        outputs, self._pending = self._pending, []
        scheduled = self.scheduler.schedule()
        if not scheduled.chunks:
            return outputs
        try:
            result = self.runner.run(scheduled)
        except Exception as error:  # a failed step must not take the engine down: fail its requests
            logger.exception("engine step failed; aborting %d requests", len(scheduled.chunks))
            return outputs + self._fail(scheduled, f"{type(error).__name__}: {error}")
        self.scheduler.commit(scheduled)
        return outputs + self._process(scheduled, result)

    def _process(self, scheduled: SchedulerOutput, result: RunnerOutput) -> list[RequestOutput]:
        outputs = []
        now = time.monotonic()
        sampled = [chunk.request for chunk in scheduled.chunks if chunk.sample]
        for request, token in zip(sampled, result.sampled_token_ids, strict=True):
            if request.first_token_time is None:
                request.first_token_time = now
            output = self.outputs.append_token(request, token)
            if output.finished:
                self._finish(request)
            outputs.append(output)
        self._generation_tokens_total += len(sampled)
        return outputs

    def _fail(self, scheduled: SchedulerOutput, error: str) -> list[RequestOutput]:
        outputs = []
        for chunk in scheduled.chunks:
            outputs.append(self.outputs.finish(chunk.request, "abort", error))
            self._finish(chunk.request)
        return outputs

    def _finish(self, request: Request) -> None:
        self.scheduler.remove(request)
        del self._requests[request.request_id]

    # -- conveniences -------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        counters = self.scheduler.counters
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.block_manager.num_blocks,
            kv_blocks_free=self.block_manager.num_free_blocks,
            prefix_cache_queried_tokens=counters.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=counters.prefix_cache_hit_tokens,
            num_preemptions=counters.num_preemptions,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
        )

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[CompletedRequest]:
        """Run `prompts` to completion; results in input order. For offline use: outputs of requests
        added by other means while it runs are consumed and dropped."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        batch = next(self._arrivals)
        ids = [f"generate-{batch}-{index}" for index in range(len(prompts))]
        for request_id, prompt, prompt_params in zip(ids, prompts, per_prompt, strict=True):
            self.add_request(request_id, prompt, prompt_params)
        results = {
            request_id: CompletedRequest(request_id, list(prompt), [], "", None, None, 0, None)
            for request_id, prompt in zip(ids, prompts, strict=True)
        }
        remaining = set(ids)
        while remaining:
            for output in self.step():
                result = results.get(output.request_id)
                if result is None:
                    continue
                result.token_ids.extend(output.new_token_ids)
                result.text += output.text_delta
                if output.finished:
                    result.finish_reason, result.stop_reason = output.finish_reason, output.stop_reason
                    result.num_cached_tokens = output.num_cached_tokens
                    if output.first_token_time is not None:
                        result.time_to_first_token = output.first_token_time - output.arrival_time
                    remaining.discard(output.request_id)
        return [results[request_id] for request_id in ids]

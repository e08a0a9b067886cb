"""LLMEngine: requests in, one step at a time, RequestOutputs out. Single-threaded; see AsyncEngine."""

from __future__ import annotations

import itertools
import logging
import time

import torch
from transformers import AutoTokenizer

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.draft_proposer import DraftModelProposer
from engine.model_runner import ModelRunner, RunnerOutput
from engine.output_processor import OutputProcessor
from engine.outputs import CompletedRequest, EngineStats, InvalidRequestError, RequestOutput
from engine.parallel_sampling import SequenceGroup, child_params
from engine.pooling import PooledState, PoolingParams, default_pooling_type
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from engine.speculative import NgramProposer, Proposer, accepted_tokens, can_speculate
from engine.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)

# How long an idle step waits for a grammar compile before returning to its caller's loop.
COMPILE_WAIT_SECONDS = 0.005


# An embedding request's sampling parameters: it never samples, and its text state and stop checks are never
# reached; the defaults keep them inert.
_NO_SAMPLING = SamplingParams()


class LLMEngine:
    """Continuous batching over a paged KV cache: add_request, then call step() until done."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        spec = self.runner.spec
        self.max_model_len = self.runner.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        eos = set(spec.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.outputs = OutputProcessor(self.tokenizer, frozenset(eos), self.max_model_len)
        self.structured = StructuredOutputManager(
            self.tokenizer, spec.vocab_size, sorted(eos), config.max_num_seqs, self.runner.device
        )
        self.proposer = self._proposer()
        # A sequence classifier's head (pooled [hidden] -> float32 logits); None for a causal LM.
        self.classifier_head = self.runner.classify if spec.num_labels is not None else None
        # Embedding requests that name no pooling type get the checkpoint's own; a classifier pools its last
        # token, as Hugging Face's *ForSequenceClassification does.
        self.default_pooling_type = "LAST" if self.classifier_head is not None else default_pooling_type(config.model)
        # Running and waiting sequences by their own id (a client's id unless it asked for n > 1).
        self._requests: dict[str, Request] = {}
        # Requests with several sequences (n > 1 or best_of), by the client's id.
        self._groups: dict[str, SequenceGroup] = {}
        # Final outputs of aborted requests, returned by the next step().
        self._pending: list[RequestOutput] = []
        self._arrivals = itertools.count()
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._spec_draft_tokens_total = 0
        self._spec_accepted_tokens_total = 0

    def _proposer(self) -> Proposer | None:
        """What speculative_config asks for: a draft model (the runner loaded it), n-gram lookup, or none."""
        speculative = self.config.speculative_config
        if speculative is None:
            return None
        if speculative.method == "ngram":
            return NgramProposer(speculative)
        assert self.runner.draft is not None, "method draft_model, but the runner loaded no draft"
        return DraftModelProposer(self.runner.draft, speculative, self.config.max_num_batched_tokens)

    # -- requests -----------------------------------------------------------------------------------

    def validate_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        lora_name: str | None = None,
        lora_path: str | None = None,
    ) -> None:
        """Raise InvalidRequestError for a request the engine can never serve (no state is touched)."""
        if lora_name is not None:
            self.runner.adapters.check(lora_name, lora_path)
        elif lora_path is not None:
            raise InvalidRequestError("lora_path needs the lora_name of the adapter it holds")
        prompt_token_ids = self._truncated(prompt_token_ids, params)
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty")
        vocab_size = self.runner.spec.vocab_size
        bad = [token for token in prompt_token_ids if not (isinstance(token, int) and 0 <= token < vocab_size)]
        if bad:
            raise InvalidRequestError(f"prompt token ids out of range [0, {vocab_size}): {bad[:8]}")
        if isinstance(params, PoolingParams):
            self._validate_pooling(num_prompt, params)
            return
        if self.classifier_head is not None:
            raise InvalidRequestError(
                f"this model is a sequence classifier ({self.runner.spec.architecture}): it has no LM head to "
                "generate with; send its inputs as pooling requests, which answer with the classifier's logits"
            )
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
        if params.num_sequences > self.config.max_num_seqs:
            raise InvalidRequestError(
                f"a request of {params.num_sequences} sequences (n or best_of) exceeds max_num_seqs "
                f"{self.config.max_num_seqs}"
            )
        for name, tokens in (
            ("logit_bias", list(params.logit_bias)),
            ("allowed_token_ids", params.allowed_token_ids or []),
        ):
            outside = [token for token in tokens if token >= vocab_size]
            if outside:
                raise InvalidRequestError(
                    f"parameter '{name}' has token ids out of range [0, {vocab_size}): {outside[:8]}"
                )
        self._check_pool_holds(min(num_prompt + (params.max_tokens or self.max_model_len), self.max_model_len))
        if params.structured_outputs is not None:
            try:
                self.structured.validate(params.structured_outputs)
            except ValueError as error:
                raise InvalidRequestError(str(error)) from None

    def _validate_pooling(self, num_prompt: int, params: PoolingParams) -> None:
        if num_prompt > self.max_model_len:
            raise InvalidRequestError(
                f"the input has {num_prompt} tokens; max_model_len is {self.max_model_len}"
            )
        if self.classifier_head is not None:
            self._validate_classification(params)
        hidden_size = self.runner.spec.hidden_size
        if params.dimensions is not None and params.dimensions > hidden_size:
            raise InvalidRequestError(
                f"parameter 'dimensions' is {params.dimensions}, more than the model's embedding size {hidden_size}"
            )
        self._check_pool_holds(num_prompt)

    def _validate_classification(self, params: PoolingParams) -> None:
        """A classifier answers with its head's logits of the last token's state: no other pooling, and nothing
        of an embedding's to cut or normalize."""
        if params.pooling_type not in (None, "LAST"):
            raise InvalidRequestError(
                f"parameter 'pooling_type' is {params.pooling_type}: a sequence classifier pools its last token "
                "(LAST), as it was trained to"
            )
        for name in ("dimensions", "normalize"):
            if getattr(params, name) is not None:
                raise InvalidRequestError(
                    f"parameter '{name}' applies to embeddings; a sequence classifier answers with its logits"
                )

    def _check_pool_holds(self, num_tokens: int) -> None:
        if self.block_manager.blocks_needed(num_tokens) > self.block_manager.num_blocks:
            raise InvalidRequestError(
                f"a request of up to {num_tokens} tokens needs {self.block_manager.blocks_needed(num_tokens)} KV "
                f"blocks; the pool has {self.block_manager.num_blocks}"
            )

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
    ) -> None:
        """Generate with SamplingParams, or embed the prompt with PoolingParams (one output, its
        `embedding`: on a sequence classifier, its logits). `lora_name` names the LoRA adapter to serve the
        request with (None: the base model): one of config.lora_modules, or, with runtime loading allowed,
        the adapter in directory `lora_path`, loaded now if it is not yet (engine.lora_slots)."""
        if request_id in self._requests or request_id in self._groups:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if cache_salt is not None and "\x00" in cache_salt:
            # NUL separates the salts the engine adds itself (adapter, prompt logprobs, pooling) from the
            # request's: one holding it could pass for another adapter's and read its blocks.
            raise InvalidRequestError("cache_salt must not contain NUL characters")
        self.validate_request(prompt_token_ids, params, lora_name, lora_path)
        prompt = self._truncated(prompt_token_ids, params)
        if lora_name is not None:
            adapter = self.runner.adapters.acquire(
                lora_name, lora_path, self._adapters_in_use, self._load_lora, self.runner.unload_lora
            )
            # An adapter changes every layer's keys and values: its blocks are its own.
            cache_salt = f"{cache_salt or ''}\x00lora:{lora_name}:{adapter.load_id}"
        if isinstance(params, PoolingParams):
            self._add_pooling_request(request_id, prompt, params, priority, cache_salt, lora_name)
            return
        if params.prompt_logprobs is not None:
            # Prompt logprobs need every prompt position's logits: never read the shared prefix cache
            # (n > 1 sequences still share the first sequence's blocks under this private salt).
            cache_salt = f"{cache_salt or ''}\x00prompt-logprobs:{next(self._arrivals)}"
        arrival_seq, arrival_time = next(self._arrivals), time.monotonic()
        bad_words = self._bad_words_token_ids(params.bad_words)
        num_sequences = params.num_sequences
        sequences = []
        # Every sequence is built before any is registered: a failure here leaves no trace in the engine.
        for index in range(num_sequences):
            sequence_params = params if num_sequences == 1 else child_params(params, index)
            request = Request(
                request_id=request_id if num_sequences == 1 else f"{index}_{request_id}",
                prompt_token_ids=prompt,
                params=sequence_params,
                priority=priority,
                arrival_seq=arrival_seq,
                arrival_time=arrival_time,
                cache_salt=cache_salt,
                lora_name=lora_name,
                generator=self._generator(sequence_params.seed),
                min_tokens_suppressed=self._min_tokens_suppressed(params),
                parent_id=None if num_sequences == 1 else request_id,
                index=index,
                bad_words_token_ids=bad_words,
                # best_of ranks sequences by cumulative logprob, so it needs the sampled tokens' logprobs.
                num_logprobs=0 if params.logprobs is None and num_sequences > params.n else params.logprobs,
                prompt_logprobs=[None] if params.prompt_logprobs is not None else [],
            )
            sequences.append(request)
        try:
            for request in sequences:
                self._requests[request.request_id] = request
                self.outputs.add(request)
            if num_sequences > 1:
                self._groups[request_id] = SequenceGroup(request_id, params, sequences)
            self._schedule(sequences[0])
        except BaseException:  # all or nothing: a half-added request would never be scheduled nor end
            for request in sequences:
                self._requests.pop(request.request_id, None)
                self.outputs.discard(request)
            self._groups.pop(request_id, None)
            self.structured.remove(sequences[0].request_id)
            raise
        self._prompt_tokens_total += len(prompt)

    def _adapters_in_use(self) -> set[str]:
        return {request.lora_name for request in self._requests.values() if request.lora_name is not None}

    def _load_lora(self, name: str, path: str, slot: int) -> None:
        try:
            self.runner.load_lora(name, path, slot)
        except ValueError as error:  # the directory holds no adapter this model can take
            raise InvalidRequestError(str(error)) from None

    def _add_pooling_request(
        self,
        request_id: str,
        prompt: list[int],
        params: PoolingParams,
        priority: int,
        cache_salt: str | None,
        lora_name: str | None,
    ) -> None:
        pooling_type = params.pooling_type or self.default_pooling_type
        if pooling_type != "LAST":
            # MEAN and CLS read rows a prefix-cache hit would skip: compute every one of them.
            cache_salt = f"{cache_salt or ''}\x00pooling:{next(self._arrivals)}"
        request = Request(
            request_id=request_id,
            prompt_token_ids=prompt,
            params=_NO_SAMPLING,
            priority=priority,
            arrival_seq=next(self._arrivals),
            arrival_time=time.monotonic(),
            cache_salt=cache_salt,
            lora_name=lora_name,
            pooling=params,
            pooled=PooledState(pooling_type),
        )
        self._requests[request_id] = request
        self.outputs.add(request)
        self.scheduler.add(request)  # no grammar to compile first
        self._prompt_tokens_total += len(prompt)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        generator = torch.Generator(device=self.runner.device)
        generator.manual_seed(seed)
        return generator

    def _min_tokens_suppressed(self, params: SamplingParams) -> tuple[int, ...]:
        suppressed = tuple(self.outputs.eos_token_ids) if not params.ignore_eos else ()
        # Stop token ids past the vocabulary are never sampled: nothing to mask.
        stops = tuple(token for token in params.stop_token_ids if token < self.runner.spec.vocab_size)
        return tuple(dict.fromkeys(suppressed + stops))

    def _truncated(self, prompt_token_ids: list[int], params: SamplingParams | PoolingParams) -> list[int]:
        """truncate_prompt_tokens: keep the last k prompt tokens (-1: as many as max_model_len allows)."""
        keep = params.truncate_prompt_tokens
        if keep is None:
            return list(prompt_token_ids)
        if keep == -1:
            keep = self.max_model_len - 1
        return list(prompt_token_ids[-keep:])

    def _bad_words_token_ids(self, words: list[str]) -> tuple[tuple[int, ...], ...]:
        """Each bad word as token ids, as written and with a leading space (vLLM: a word inside a
        sentence tokenizes differently from one at the start)."""
        sequences: dict[tuple[int, ...], None] = {}
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                token_ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
                if token_ids:
                    sequences[token_ids] = None
        return tuple(sequences)

    def abort_request(self, request_id: str, error: str | None = None) -> None:
        """Free the request's blocks now (every sequence's, for n > 1); its final outputs (finish_reason
        "abort", with `error` if given) come with the next step. Unknown or finished ids are ignored."""
        group = self._groups.pop(request_id, None)
        if group is not None:
            pending = {sequence.request_id for sequence in group.pending}
            aborted = [
                self._abort_sequence(sequence, error, scheduled=sequence.request_id not in pending)
                for sequence in group.sequences
                if sequence.request_id in group.unfinished
            ]
            self._pending.extend(group.abort(aborted))
            return
        if request_id in self._requests:
            self._pending.append(self._abort_sequence(self._requests[request_id], error))

    def _abort_sequence(self, request: Request, error: str | None, scheduled: bool = True) -> RequestOutput:
        del self._requests[request.request_id]
        if scheduled:
            self._unschedule(request)
        return self.outputs.finish(request, "abort", error)

    def unfinished_request_ids(self) -> list[str]:
        """The client ids of every unfinished request."""
        return list(dict.fromkeys(request.output_id for request in self._requests.values()))

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests) or bool(self._pending)

    # -- the loop -----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, turn sampled tokens into outputs."""
        self._admit_compiled()
        self._propose_drafts()
        scheduled = self.scheduler.schedule()
        if self.proposer is not None:
            for request in scheduled.preempted:
                self.proposer.release(request)
        if not scheduled.chunks:
            self.structured.wait_for_compile(COMPILE_WAIT_SECONDS)
            return self._take_pending()
        try:
            result = self.runner.run(scheduled, self.structured.fill_bitmask)
        except Exception as error:  # a failed step must not take the engine down: fail its requests
            logger.exception("engine step failed; aborting %d requests", len(scheduled.chunks))
            return self._fail(scheduled, f"{type(error).__name__}: {error}")
        yielded, rejected = self._verify_drafts(scheduled, result)
        self.scheduler.commit(scheduled, rejected)
        processed = self._process(scheduled, result, yielded)
        # Taken last: if anything above raises, the final outputs queued by aborts wait for the next step
        # instead of being lost (their requests are gone from the engine, so nothing else would end them).
        return self._take_pending() + processed

    def _pool(self, chunk: ScheduledChunk, rows: torch.Tensor, now: float) -> RequestOutput | None:
        """Add an embedding request's chunk to its pooled state; its one output once the chunk completes
        its prompt (the request then ends, as a generation does at its last token)."""
        request = chunk.request
        assert request.pooled is not None and request.pooling is not None
        request.pooled.add_chunk(rows, chunk.num_computed_before)
        if chunk.num_computed_before + chunk.num_tokens < request.num_tokens:
            return None
        request.first_token_time = now
        embedding = request.pooled.finish(rows[-1], request.num_prompt_tokens, request.pooling, self.classifier_head)
        self._unschedule(request)
        del self._requests[request.request_id]
        return self.outputs.finish_pooled(request, embedding)

    def _propose_drafts(self) -> None:
        """Speculative tokens for each running request at its last token that may speculate, as many as
        its max_tokens and max_model_len leave room for after the token the step is sure to yield."""
        if self.proposer is None:
            return
        speculating, rooms = [], []
        for request in self.scheduler.running:
            request.draft_token_ids = []
            if request.num_computed_tokens + 1 != request.num_tokens or not can_speculate(request):
                continue
            room = self.max_model_len - request.num_tokens - 1
            if request.params.max_tokens is not None:
                room = min(room, request.params.max_tokens - request.num_output_tokens - 1)
            speculating.append(request)
            rooms.append(room)
        for request, drafts in zip(speculating, self.proposer.propose_batch(speculating, rooms), strict=True):
            request.draft_token_ids = drafts

    def _verify_drafts(self, scheduled: SchedulerOutput, result: RunnerOutput) -> tuple[list[list[int]], dict[str, int]]:
        """Per sampled chunk, the tokens the step yields (its sampled token, or its accepted drafts and the
        model's token after them); and by request id, the drafts the model disagreed with."""
        if self.proposer is None:
            return result.sampled_token_ids, {}
        yielded, rejected = [], {}
        sampled = (chunk for chunk in scheduled.chunks if chunk.sample)
        for chunk, targets in zip(sampled, result.sampled_token_ids, strict=True):
            tokens = accepted_tokens(chunk.draft_token_ids, targets)
            if chunk.draft_token_ids:
                self._spec_draft_tokens_total += len(chunk.draft_token_ids)
                self._spec_accepted_tokens_total += len(tokens) - 1
                rejected[chunk.request.request_id] = len(chunk.draft_token_ids) + 1 - len(tokens)
            yielded.append(tokens)
        return yielded, rejected

    def _process(
        self, scheduled: SchedulerOutput, result: RunnerOutput, yielded: list[list[int]]
    ) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        now = time.monotonic()
        for chunk in result.prompt_logprobs:
            # A prefill recomputed after a preemption may cover positions already recorded: keep the new tail.
            recorded = chunk.request.prompt_logprobs
            known = len(recorded) - chunk.first_position
            if known >= 0:
                recorded.extend(chunk.entries[known:])
        for pooling_chunk, rows in result.pooling_rows:
            pooled = self._pool(pooling_chunk, rows, now)
            if pooled is not None:
                outputs.append(pooled)
        sampled = [chunk.request for chunk in scheduled.chunks if chunk.sample]
        for request, tokens, logprobs in zip(sampled, yielded, result.logprobs, strict=True):
            if request.first_token_time is None:
                request.first_token_time = now
            for position, token in enumerate(tokens):
                grammar_verdict = self.structured.accept(request, token)
                if grammar_verdict is not None:  # the grammar completed ("stop", as EOS does) or failed ("abort")
                    request.finish_reason = grammar_verdict
                    tokens = tokens[: position + 1]
                    break
            output = self.outputs.append_tokens(request, tokens, logprobs)
            self._generation_tokens_total += len(output.new_token_ids)
            group = self._groups.get(request.output_id) if request.parent_id is not None else None
            if group is not None and request.index == 0 and group.pending:
                for sequence in group.release_pending():
                    self._schedule(sequence)
            if output.finish_reason is not None:
                self._unschedule(request)
                del self._requests[request.request_id]
            if group is None:
                outputs.append(output)
                continue
            outputs.extend(group.route(request, output))
            if output.finished:
                del self._groups[group.request_id]
        return outputs

    def _schedule(self, request: Request) -> None:
        """Queue a sequence; a constrained one whose grammar is still compiling is parked until then."""
        if request.params.structured_outputs is None or self.structured.add(request):
            self.scheduler.add(request)

    def _unschedule(self, request: Request) -> None:
        """Take a sequence out of the scheduler (or the grammar-compile park) for good."""
        if not self.structured.is_parked(request.request_id):
            self.scheduler.remove(request)
        self.structured.remove(request.request_id)
        if self.proposer is not None:
            self.proposer.release(request)

    def _admit_compiled(self) -> None:
        """Schedule parked sequences whose grammar compiled; abort those whose compile failed."""
        results = self.structured.poll()
        for request in results.ready:
            self.scheduler.add(request)
        for request, error in results.failed:
            self.abort_request(request.output_id, error)

    def _fail(self, scheduled: SchedulerOutput, error: str) -> list[RequestOutput]:
        """Abort every request with a sequence in the failed step (all sequences of a group); returns every
        queued final output, theirs included."""
        for request_id in dict.fromkeys(chunk.request.output_id for chunk in scheduled.chunks):
            self.abort_request(request_id, error)
        return self._take_pending()

    def _take_pending(self) -> list[RequestOutput]:
        """The final outputs that aborts queued since the last step returned them."""
        outputs, self._pending = self._pending, []
        return outputs

    # -- conveniences -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes, if any; the engine cannot step afterwards."""
        self.runner.shutdown()

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
            spec_draft_tokens_total=self._spec_draft_tokens_total,
            spec_accepted_tokens_total=self._spec_accepted_tokens_total,
        )

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        lora_name: str | None | list[str | None] = None,
        lora_paths: dict[str, str] | None = None,
    ) -> list[CompletedRequest]:
        """Run `prompts` to completion; results in input order. `lora_name`: one adapter for every prompt
        or one per prompt; `lora_paths`: the directories of adapters not in lora_modules, by name (runtime
        loading). For offline use: outputs of requests added by other means while it runs are consumed and
        dropped."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        adapters = lora_name if isinstance(lora_name, list) else [lora_name] * len(prompts)
        if len(per_prompt) != len(prompts) or len(adapters) != len(prompts):
            raise ValueError(
                f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams and {len(adapters)} lora names"
            )
        if any(prompt_params.num_sequences > 1 for prompt_params in per_prompt):
            raise ValueError("generate() returns one sequence per prompt; step() streams n > 1 sequences")
        batch = next(self._arrivals)
        ids = [f"generate-{batch}-{index}" for index in range(len(prompts))]
        for request_id, prompt, prompt_params, adapter in zip(ids, prompts, per_prompt, adapters, strict=True):
            path = (lora_paths or {}).get(adapter) if adapter is not None else None
            self.add_request(request_id, prompt, prompt_params, lora_name=adapter, lora_path=path)
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

    def embed(
        self, prompts: list[list[int]], params: PoolingParams | None = None, lora_name: str | None = None
    ) -> list[list[float]]:
        """Each prompt's embedding (vLLM's LLM.embed; a sequence classifier's logits, as its LLM.classify
        before the activation), in input order; for offline use, as generate()."""
        batch = next(self._arrivals)
        ids = [f"embed-{batch}-{index}" for index in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts, strict=True):
            self.add_request(request_id, prompt, params or PoolingParams(), lora_name=lora_name)
        embeddings: dict[str, list[float]] = {}
        while len(embeddings) < len(ids):
            for output in self.step():
                if output.request_id in ids and output.embedding is not None:
                    embeddings[output.request_id] = output.embedding
                elif output.request_id in ids and output.finished:
                    raise RuntimeError(f"embedding request {output.request_id} ended without one: {output.error}")
        return [embeddings[request_id] for request_id in ids]

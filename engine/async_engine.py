"""AsyncEngine: the engine loop in its own thread, safe to call from any thread.

Callers submit and abort through a lock-guarded inbox; the loop thread sleeps on a condition while
there is nothing to do, drains the inbox between steps, steps the engine and hands every
RequestOutput to the request's callback or stream. Only the loop thread touches the LLMEngine.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import (
    EngineDeadError,
    EngineOverloadedError,
    EngineStats,
    InvalidRequestError,
    RequestOutput,
)
from engine.pooling import PoolingParams
from engine.sampling_params import SamplingParams
from engine.stream_interval import StreamCoalescer

logger = logging.getLogger(__name__)

OutputCallback = Callable[[RequestOutput], None]


class RequestStream:
    """A request's outputs as a blocking iterator; it ends after the finished output."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: queue.Queue[RequestOutput] = queue.Queue()
        self._done = False

    def put(self, output: RequestOutput) -> None:
        self._queue.put(output)

    def get(self, timeout: float | None = None) -> RequestOutput:
        """The next output; raises queue.Empty after `timeout` seconds, StopIteration once finished."""
        if self._done:
            raise StopIteration
        output = self._queue.get(timeout=timeout)
        self._done = output.finished
        return output

    def __iter__(self) -> Iterator[RequestOutput]:
        while not self._done:
            yield self.get()


@dataclass
class _Submission:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams
    priority: int
    cache_salt: str | None
    lora_name: str | None
    lora_path: str | None


@dataclass
class _Inbox:
    """Work handed from caller threads to the loop thread (guarded by AsyncEngine._cond)."""

    submissions: list[_Submission] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    stopping: bool = False


class AsyncEngine:
    """Thread-safe front of LLMEngine for servers (the Triton llm model)."""

    def __init__(self, config: EngineConfig) -> None:
        self._max_waiting = config.max_waiting_requests
        self._max_num_seqs = config.max_num_seqs
        self._cond = threading.Condition()
        self._inbox = _Inbox()
        # Set (under _cond) once a bug stopped the loop thread.
        self._stopped = False
        # request id -> where its outputs go; guarded by _cond. An id stays here until its final output.
        self._sinks: dict[str, OutputCallback] = {}
        # The engine is built on the loop thread so that all its torch ops, loading included, run on one
        # thread. Each thread that runs a parallel CPU op gets its own OpenMP team, and once a process
        # holds more OpenMP threads than CPUs libgomp stops letting idle workers spin: they sleep after
        # every op and wake late for the next. Built on the caller's thread and stepped on this one, the
        # engine ran on ~1.5 of 2 cores.
        built: queue.Queue[LLMEngine | BaseException] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(
            target=self._run, args=(config, built), name="engine-loop", daemon=True
        )
        self._thread.start()
        engine = built.get()
        if isinstance(engine, BaseException):
            self._thread.join()
            raise engine
        self._engine = engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len

    def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RequestStream:
        """Queue a request. Validation happens here (InvalidRequestError), and admission:
        EngineOverloadedError when `max_waiting_requests` are already waiting, EngineDeadError once the
        loop thread has stopped. `on_output` is called from the engine thread and must not block; without
        it, outputs queue in the returned stream."""
        self._engine.validate_request(prompt_token_ids, params, lora_name, lora_path)
        stream = RequestStream(request_id)
        with self._cond:
            if self._inbox.stopping:
                raise RuntimeError("the engine is shut down")
            if not self.is_alive():
                raise EngineDeadError()
            if request_id in self._sinks:
                raise InvalidRequestError(f"request id {request_id!r} is already in use")
            # Queued requests beyond the running batch's free seats are the ones that will wait.
            queued = self._stats.num_waiting + len(self._inbox.submissions)
            waiting = max(0, queued - max(0, self._max_num_seqs - self._stats.num_running))
            if self._max_waiting is not None and waiting >= self._max_waiting:
                raise EngineOverloadedError(
                    f"the engine queue is full ({waiting} requests waiting, max_waiting_requests is "
                    f"{self._max_waiting}); retry later"
                )
            self._sinks[request_id] = on_output or stream.put
            self._inbox.submissions.append(
                _Submission(request_id, list(prompt_token_ids), params, priority, cache_salt, lora_name, lora_path)
            )
            self._cond.notify()
        return stream

    def abort(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._sinks:
                self._inbox.aborts.append(request_id)
                self._cond.notify()

    def is_alive(self) -> bool:
        """The loop thread runs (or is shutting down cleanly); False once a bug stopped it."""
        return self._thread.is_alive() and not self._stopped

    def stats(self) -> EngineStats:
        with self._cond:
            return self._stats

    def shutdown(self) -> None:
        """Abort every request (each gets its final output), join the loop thread, then stop the
        engine's tensor-parallel workers."""
        with self._cond:
            self._inbox.stopping = True
            self._cond.notify()
        self._thread.join()
        self._engine.shutdown()

    # -- the loop thread ----------------------------------------------------------------------------

    def _run(self, config: EngineConfig, built: queue.Queue[LLMEngine | BaseException]) -> None:
        try:
            engine = LLMEngine(config)
        except BaseException as error:  # handed to the constructor, which raises it in the caller
            built.put(error)
            return
        self._stats = engine.stats()
        built.put(engine)
        try:
            self._loop(engine, StreamCoalescer(config.stream_interval))
        except BaseException as error:  # a bug the loop's own guards missed: end every request, then stop
            logger.exception("the engine loop stopped")
            with self._cond:
                # From here submit refuses: a request queued now would never be read.
                self._stopped = True
                stranded, self._sinks = self._sinks, {}
            for request_id, sink in stranded.items():
                try:
                    sink(
                        self._failed(request_id, f"the engine loop stopped: {type(error).__name__}: {error}")
                    )
                except Exception:
                    logger.exception("output callback of %s raised", request_id)

    def _loop(self, engine: LLMEngine, coalescer: StreamCoalescer) -> None:
        while True:
            with self._cond:
                while not (self._inbox.submissions or self._inbox.aborts or self._inbox.stopping) and not (
                    engine.has_unfinished_requests()
                ):
                    self._cond.wait()
                inbox, self._inbox = self._inbox, _Inbox(stopping=self._inbox.stopping)
            for submission in inbox.submissions:
                try:
                    engine.add_request(
                        submission.request_id,
                        submission.prompt_token_ids,
                        submission.params,
                        priority=submission.priority,
                        cache_salt=submission.cache_salt,
                        lora_name=submission.lora_name,
                        lora_path=submission.lora_path,
                    )
                except InvalidRequestError as error:  # e.g. an id reused after its abort was queued
                    self._deliver([self._rejected(submission, str(error), "invalid")])
                except EngineOverloadedError as error:  # e.g. every LoRA adapter slot in use
                    self._deliver([self._rejected(submission, str(error), "busy")])
                except Exception as error:  # a bug admitting this one request: it fails, the loop goes on
                    logger.exception("adding request %s raised", submission.request_id)
                    self._deliver([self._rejected(submission, f"{type(error).__name__}: {error}", None)])
                else:
                    # An embedding request has one output: nothing to coalesce.
                    interval = submission.params.stream_interval if isinstance(submission.params, SamplingParams) else 1
                    coalescer.add(submission.request_id, interval)
            aborts = inbox.aborts + (engine.unfinished_request_ids() if inbox.stopping else [])
            for request_id in aborts:
                engine.abort_request(request_id)
            if inbox.submissions:
                with self._cond:  # admission counts what just joined the queue, not the last step's view
                    self._stats = engine.stats()
            try:
                outputs = engine.step()
            except Exception as error:  # a bug outside the model run: fail what is in flight, keep serving
                logger.exception("engine step raised")
                for request_id in engine.unfinished_request_ids():
                    engine.abort_request(request_id, f"{type(error).__name__}: {error}")
                outputs = []
            self._deliver(coalescer.coalesce(outputs))
            with self._cond:
                self._stats = engine.stats()
                if inbox.stopping and not engine.has_unfinished_requests():
                    return

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            with self._cond:
                sink = self._sinks.get(output.request_id)
                if output.finished:
                    self._sinks.pop(output.request_id, None)
            if sink is None:
                continue
            try:
                sink(output)
            except Exception:
                logger.exception("output callback of %s raised", output.request_id)

    @staticmethod
    def _rejected(submission: _Submission, error: str, rejected: str | None) -> RequestOutput:
        """The one output of a submission add_request refused (RequestOutput.rejected says why)."""
        failed = AsyncEngine._failed(submission.request_id, error, len(submission.prompt_token_ids))
        failed.rejected = rejected
        return failed

    @staticmethod
    def _failed(request_id: str, error: str, num_prompt_tokens: int = 0) -> RequestOutput:
        return RequestOutput(
            request_id=request_id,
            new_token_ids=[],
            text_delta="",
            num_prompt_tokens=num_prompt_tokens,
            num_output_tokens=0,
            num_cached_tokens=0,
            finished=True,
            finish_reason="abort",
            stop_reason=None,
            error=error,
        )

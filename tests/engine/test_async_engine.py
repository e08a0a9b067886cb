"""AsyncEngine: concurrent submits from threads, streams, callbacks, aborts mid-stream, shutdown."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    EngineOverloadedError,
    InvalidRequestError,
    PoolingParams,
    RequestOutput,
    SamplingParams,
)
from engine import async_engine as async_engine_module
from tests.engine.conftest import Reference


@pytest.fixture(scope="module")
def async_engine(model_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=512, num_kv_blocks=64)
    )
    yield engine
    engine.shutdown()


def wait_for_free_blocks(engine: AsyncEngine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.kv_blocks_free == stats.kv_blocks_total and stats.num_running == stats.num_waiting == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"blocks not returned: {engine.stats()}")


def started_stream(engine: AsyncEngine, request_id: str, prompt: list[int]) -> queue.Queue[RequestOutput]:
    """A long greedy request whose first token has arrived; the rest of its outputs come into the queue."""
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    engine.submit(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=200), on_output=outputs.put)
    first = outputs.get(timeout=60)
    assert not first.finished and first.new_token_ids
    return outputs


def final_output(outputs: queue.Queue[RequestOutput]) -> RequestOutput:
    while not (output := outputs.get(timeout=60)).finished:
        pass
    return output


def test_concurrent_submits_from_threads(async_engine: AsyncEngine, reference: Reference) -> None:
    results: dict[int, list[int]] = {}
    texts: dict[int, str] = {}

    def client(index: int) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[index])
        stream = async_engine.submit(f"thread-{index}", reference.prompts[index], params)
        tokens, text = [], ""
        for output in stream:
            tokens.extend(output.new_token_ids)
            text += output.text_delta
        results[index], texts[index] = tokens, text

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [results[i] for i in range(4)] == reference.outputs[:4]
    assert [texts[i] for i in range(4)] == [
        async_engine.tokenizer.decode(t, skip_special_tokens=True) for t in reference.outputs[:4]
    ]
    wait_for_free_blocks(async_engine)


def test_abort_mid_stream_frees_blocks_and_ends_stream(
    async_engine: AsyncEngine, reference: Reference
) -> None:
    outputs = started_stream(async_engine, "abort-me", reference.prompts[7])
    async_engine.abort("abort-me")
    async_engine.abort("abort-me")  # idempotent
    assert final_output(outputs).finish_reason == "abort"
    wait_for_free_blocks(async_engine)
    async_engine.abort("abort-me")  # after the end too


def test_an_abort_still_ends_its_stream_when_the_next_step_raises(
    async_engine: AsyncEngine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The abort's final output waits in the engine while the step after it fails (here the scheduler,
    once): the stream still ends, and the engine keeps serving."""
    inner = async_engine._engine
    schedule = inner.scheduler.schedule
    raised: list[bool] = []

    def fails_once_after_the_abort() -> object:
        if not raised and "abort-then-fail" not in inner.unfinished_request_ids():
            raised.append(True)
            raise RuntimeError("a scheduler bug")
        return schedule()

    outputs = started_stream(async_engine, "abort-then-fail", reference.prompts[7])
    monkeypatch.setattr(inner.scheduler, "schedule", fails_once_after_the_abort)
    async_engine.abort("abort-then-fail")
    output = final_output(outputs)
    assert raised and output.finish_reason == "abort"
    monkeypatch.undo()
    wait_for_free_blocks(async_engine)
    params = SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[0])
    assert [
        t for o in async_engine.submit("after-fail", reference.prompts[0], params) for t in o.new_token_ids
    ] == (reference.outputs[0])


def test_a_request_that_fails_admission_fails_alone(
    async_engine: AsyncEngine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error adding one request on the loop thread (a large seed once stopped the loop for
    good) fails that request only: the loop keeps serving."""
    inner = async_engine._engine
    add_request = inner.add_request

    def fails_for_one(request_id: str, *args: object, **kwargs: object) -> None:
        if request_id == "admission-bug":
            raise OverflowError("an admission bug")
        add_request(request_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inner, "add_request", fails_for_one)
    [failed] = list(async_engine.submit("admission-bug", [1, 2, 3], SamplingParams(max_tokens=2)))
    assert failed.finished and failed.error is not None and "an admission bug" in failed.error
    monkeypatch.undo()
    assert async_engine.is_alive()
    params = SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[0])
    assert [
        t for o in async_engine.submit("after-bug", reference.prompts[0], params) for t in o.new_token_ids
    ] == (reference.outputs[0])


class _LoopKiller(BaseException):
    """Escapes the loop's per-step guard (which catches Exception), as a bug of that kind would."""


def test_a_stopped_loop_ends_every_request_and_refuses_new_ones(
    model_dir: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = AsyncEngine(EngineConfig(model=str(model_dir), max_model_len=512))
    outputs = started_stream(engine, "in-flight", reference.prompts[0])

    def killed() -> list[RequestOutput]:
        raise _LoopKiller()

    monkeypatch.setattr(engine._engine, "step", killed)
    output = final_output(outputs)
    assert output.error is not None and "loop stopped" in output.error
    engine._thread.join(timeout=60)
    assert not engine.is_alive()
    with pytest.raises(EngineDeadError, match="loop has stopped"):
        engine.submit("after", [1, 2, 3], SamplingParams())


def test_submit_validates_synchronously(async_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        async_engine.submit("empty", [], SamplingParams())
    stream = async_engine.submit("dup", [1, 2, 3], SamplingParams(max_tokens=2, temperature=0.0))
    with pytest.raises(InvalidRequestError, match="already in use"):
        async_engine.submit("dup", [1, 2, 3], SamplingParams())
    assert [o.finished for o in stream][-1]
    with pytest.raises(StopIteration):
        stream.get(timeout=1)


def test_a_request_refused_on_the_loop_thread_is_the_requests_fault(model_dir: Path, tmp_path: Path) -> None:
    # The adapter directory is read when the loop takes the request up: a directory without an adapter
    # fails it there, marked as the request's fault (a 400, not an engine failure, to the client).
    engine = AsyncEngine(
        EngineConfig(
            model=str(model_dir),
            device="cpu",
            max_model_len=512,
            num_kv_blocks=16,
            allow_runtime_lora_updating=True,
        )
    )
    try:
        stream = engine.submit(
            "lora", [1, 2, 3], SamplingParams(max_tokens=2), lora_name="x", lora_path=str(tmp_path)
        )
        [output] = list(stream)
        assert output.finished and output.rejected == "invalid" and "adapter_config.json" in (output.error or "")
    finally:
        engine.shutdown()


def test_the_engine_is_built_and_stepped_on_its_loop_thread(
    model_dir: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One thread for all the engine's torch work keeps one OpenMP team in the process (see AsyncEngine).
    threads: dict[str, set[int]] = {"built": set(), "stepped": set()}

    class RecordingEngine(async_engine_module.LLMEngine):
        def __init__(self, config: EngineConfig) -> None:
            threads["built"].add(threading.get_ident())
            super().__init__(config)

        def step(self) -> list[RequestOutput]:
            threads["stepped"].add(threading.get_ident())
            return super().step()

    monkeypatch.setattr(async_engine_module, "LLMEngine", RecordingEngine)
    recorded = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=512, num_kv_blocks=32)
    )
    try:
        stream = recorded.submit("one", reference.prompts[0], SamplingParams(temperature=0.0, max_tokens=3))
        assert [o for o in stream if o.finished][0].num_output_tokens == 3
    finally:
        recorded.shutdown()
    assert len(threads["built"]) == 1
    assert threads["stepped"] == threads["built"] != {threading.get_ident()}


def test_a_model_that_cannot_load_fails_the_constructor() -> None:
    before = set(threading.enumerate())
    with pytest.raises(FileNotFoundError, match="config.json"):
        AsyncEngine(EngineConfig(model="/nonexistent/checkpoint", device="cpu"))
    assert set(threading.enumerate()) == before


def test_shutdown_aborts_everything(model_dir: Path, reference: Reference) -> None:
    engine = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=512, num_kv_blocks=32)
    )
    stream = engine.submit("long", reference.prompts[0], SamplingParams(temperature=0.0, max_tokens=400))
    engine.shutdown()
    finals = [o for o in stream if o.finished]
    assert finals and finals[0].finish_reason in ("abort", "length", "stop")
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit("late", [1, 2], SamplingParams())


def test_a_full_queue_refuses_new_requests_until_it_drains(model_dir: Path, reference: Reference) -> None:
    engine = AsyncEngine(
        EngineConfig(
            model=str(model_dir),
            device="cpu",
            max_model_len=512,
            num_kv_blocks=64,
            max_num_seqs=1,
            max_waiting_requests=2,
        )
    )
    try:
        long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        engine.submit("running", reference.prompts[0], long)
        deadline = time.monotonic() + 30.0
        while engine.stats().num_running < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = [
            engine.submit(f"waiting-{i}", reference.prompts[0], SamplingParams(max_tokens=2))
            for i in range(2)
        ]
        with pytest.raises(EngineOverloadedError, match="queue is full"):
            engine.submit("refused", reference.prompts[0], SamplingParams(max_tokens=2))
        engine.abort("running")
        assert all(any(o.finished for o in stream) for stream in waiting)
        later = engine.submit("later", reference.prompts[0], SamplingParams(max_tokens=2))
        assert [o for o in later if o.finished][0].finish_reason == "length"
    finally:
        engine.shutdown()


def test_embedding_request_has_one_output(async_engine: AsyncEngine, reference: Reference) -> None:
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    async_engine.submit("embed", reference.prompts[0], PoolingParams(dimensions=32), on_output=outputs.put)
    output = outputs.get(timeout=60)
    assert output.finished and output.finish_reason == "stop" and output.embedding is not None
    assert len(output.embedding) == 32 and output.num_prompt_tokens == len(reference.prompts[0])
    assert outputs.empty()
    with pytest.raises(InvalidRequestError, match="parameter 'dimensions' is 4096"):
        async_engine.submit("too-wide", reference.prompts[0], PoolingParams(dimensions=4096))
    wait_for_free_blocks(async_engine)

"""Background responses (`background=true`): the task generating each one and the events it has emitted.

A run's events stay in memory while it runs, so `GET /v1/responses/{id}?stream=true&starting_after=N`
followers on this replica receive everything after N and then follow live. Cancelling a run cancels its
task, which closes the Triton stream. Other replicas sharing the store see a run through it: every
WATCH_SECONDS a watcher stores each run's new events (their followers poll for them), keeps the runs alive
in the store (`keep_alive`: followers elsewhere tell a running response from one whose replica died) and
cancels the runs another replica asked to cancel or deleted. Once a run ends all its events are in the
store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from frontend.response_store import JSON, ResponseStore

logger = logging.getLogger(__name__)

# How often runs' new events reach the store and other replicas' cancel requests are looked for: what a
# follower or a cancel on another replica waits at most, beyond its own polling.
WATCH_SECONDS = 0.5


class BackgroundRun:
    """One background response in flight: its event log (sequence number = position) and its task."""

    def __init__(self) -> None:
        self.events: list[JSON] = []
        # How many of the events the watcher has stored.
        self.shared = 0
        self.done = False
        # Replaced after every change; followers wait on the one current when they looked.
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def append(self, event: JSON) -> None:
        self.events.append(event)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, starting_after: int) -> AsyncIterator[JSON]:
        """Events with a sequence number above `starting_after`, live until the run ends."""
        position = max(starting_after + 1, 0)
        while True:
            changed = self._changed
            while position < len(self.events):
                yield self.events[position]
                position += 1
            if self.done:
                return
            await changed.wait()


class BackgroundRuns:
    """The background responses this process is generating, by response id."""

    def __init__(self, store: ResponseStore) -> None:
        self._store = store
        self._runs: dict[str, BackgroundRun] = {}
        self._watcher: asyncio.Task[None] | None = None

    def start(
        self, response_id: str, work: Callable[[BackgroundRun], Coroutine[Any, Any, None]]
    ) -> BackgroundRun:
        run = BackgroundRun()
        self._runs[response_id] = run

        async def supervised() -> None:
            try:
                await work(run)
            finally:
                run.finish()
                self._runs.pop(response_id, None)

        run.task = asyncio.get_running_loop().create_task(supervised())
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return run

    async def _watch(self) -> None:
        """While runs are in flight: share their new events, keep them alive, act on what other replicas did."""
        while self._runs:
            await asyncio.sleep(WATCH_SECONDS)
            # Kept alive first: sharing many runs' events must not delay it past what others take for death.
            try:
                await asyncio.to_thread(self._store.keep_alive, list(self._runs))
            except Exception:  # the store unreachable for a moment: the runs go on, the next round retries
                logger.exception("keeping background responses alive in the store failed")
            for response_id, run in list(self._runs.items()):
                new = run.events[run.shared :]
                if new:
                    # One run's failure must not hold up the others' events nor the cancels below.
                    try:
                        await asyncio.to_thread(self._store.append_events, response_id, new)
                    except Exception:
                        logger.exception("sharing the events of background response %s failed", response_id)
                        continue
                    run.shared += len(new)
            try:
                stopped = await asyncio.to_thread(self._store.stopped_elsewhere, list(self._runs))
            except Exception:  # the store unreachable for a moment: the runs go on, the next round retries
                logger.exception("checking background responses in the store failed")
                continue
            for response_id in stopped:
                await self.cancel(response_id)

    def get(self, response_id: str) -> BackgroundRun | None:
        return self._runs.get(response_id)

    async def cancel(self, response_id: str) -> bool:
        """Cancel a run and wait until it has recorded its cancellation; False if none was running."""
        run = self._runs.get(response_id)
        if run is None or run.task is None:
            return False
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        return True

    async def cancel_all(self) -> None:
        for response_id in list(self._runs):
            await self.cancel(response_id)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

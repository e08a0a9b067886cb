"""Background responses (`background=true`): the task generating each one and the events it has emitted.

A run's events stay in memory while it runs, so `GET /v1/responses/{id}?stream=true&starting_after=N`
followers receive everything after N and then follow live; once the run ends its events are in the store
and followers read them from there. Cancelling a run cancels its task, which closes the Triton stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

JSON = dict[str, Any]


class BackgroundRun:
    """One background response in flight: its event log (sequence number = position) and its task."""

    def __init__(self) -> None:
        self.events: list[JSON] = []
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

    def __init__(self) -> None:
        self._runs: dict[str, BackgroundRun] = {}

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
        return run

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

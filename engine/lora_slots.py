"""Which LoRA adapter sits in which slot of the model.

The adapters of `lora_modules` take slots 1.. at start and keep them. With runtime loading on
(`allow_runtime_lora_updating`, vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING) a request may also bring an adapter
by name and directory, as vLLM's LoRARequest does: the engine loads it into a free slot the first time and
keeps it for the next requests naming it, up to `max_loras` adapters in all; past that the least recently
used one no request is using gives its slot up. Every engine instance (data parallel) loads what its own
requests bring, so an adapter loaded through the API reaches whichever instance serves it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from engine.outputs import EngineOverloadedError, InvalidRequestError


@dataclass
class LoadedAdapter:
    name: str
    path: str
    slot: int
    # Which load of the engine this is: prefix-cache blocks computed with one adapter are not another's,
    # even one loaded later under the same name.
    load_id: int
    # One of lora_modules: never unloaded.
    static: bool
    # The latest request that named it, by the order they came (for least-recently-used eviction).
    last_used: int = 0


class AdapterSlots:
    def __init__(self, static: dict[str, str], max_loras: int, runtime_loading: bool) -> None:
        self.max_loras = max(max_loras, len(static))
        self.runtime_loading = runtime_loading
        self._loads = itertools.count(1)
        self._uses = itertools.count(1)
        # Replaced whole on every change, never changed in place: check() reads it from other threads.
        self.adapters: dict[str, LoadedAdapter] = {
            name: LoadedAdapter(name, path, slot, next(self._loads), static=True)
            for slot, (name, path) in enumerate(static.items(), start=1)
        }

    def check(self, name: str, path: str | None) -> None:
        """Refuse (InvalidRequestError) a request that names an adapter it can never have: one not loaded
        that it does not bring, one it brings where runtime loading is off, or another directory under
        the name of a configured one. Touches nothing (any thread may ask)."""
        loaded = self.adapters.get(name)
        if path is None:
            if loaded is None:
                names = ", ".join(self.adapters) or "none"
                raise InvalidRequestError(f"LoRA adapter {name!r} is not loaded (loaded: {names})")
            return
        if loaded is not None and loaded.static:
            if loaded.path != path:
                raise InvalidRequestError(
                    f"LoRA adapter {name!r} is configured (lora_modules) with {loaded.path}, not {path}"
                )
            return
        if not self.runtime_loading:
            raise InvalidRequestError(
                f"LoRA adapter {name!r} from {path}: this engine loads adapters only at start (lora_modules); "
                "allow_runtime_lora_updating is off"
            )

    def acquire(
        self,
        name: str,
        path: str | None,
        in_use: Callable[[], set[str]],
        load: Callable[[str, str, int], None],
        unload: Callable[[int], None],
    ) -> LoadedAdapter:
        """The adapter a new request runs with, loaded now (`load(name, path, slot)`) if it is not, into
        a free slot or the slot of the least recently used adapter outside `in_use()` (`unload(slot)`
        first). A directory other than the loaded one's replaces it once no request uses it. The request
        has passed check() (LLMEngine.validate_request)."""
        loaded = self.adapters.get(name)
        if loaded is not None and (path is None or path == loaded.path):
            loaded.last_used = next(self._uses)
            return loaded
        assert path is not None, "check() refuses an adapter that is neither loaded nor brought"
        busy = in_use()
        if loaded is not None:
            if name in busy:
                raise InvalidRequestError(
                    f"LoRA adapter {name!r} is serving requests with {loaded.path}; {path} can replace it "
                    "once they end"
                )
            self._evict(loaded, unload)
        slot = self._free_slot(busy, unload)
        load(name, path, slot)
        adapter = LoadedAdapter(name, path, slot, next(self._loads), static=False, last_used=next(self._uses))
        self.adapters = {**self.adapters, name: adapter}
        return adapter

    def slot_of(self, name: str) -> int:
        return self.adapters[name].slot

    def _free_slot(self, busy: set[str], unload: Callable[[int], None]) -> int:
        taken = {adapter.slot for adapter in self.adapters.values()}
        if len(taken) < self.max_loras:
            return min(set(range(1, self.max_loras + 1)) - taken)
        idle = [
            adapter for adapter in self.adapters.values() if not adapter.static and adapter.name not in busy
        ]
        if not idle:
            # Not the request's fault: it may be served once one of those adapters' requests end.
            raise EngineOverloadedError(
                f"all {self.max_loras} LoRA adapter slots (max_loras) hold adapters in use, so the queue is "
                "full for another adapter; retry later"
            )
        oldest = min(idle, key=lambda adapter: adapter.last_used)
        self._evict(oldest, unload)
        return oldest.slot

    def _evict(self, adapter: LoadedAdapter, unload: Callable[[int], None]) -> None:
        unload(adapter.slot)
        self.adapters = {name: kept for name, kept in self.adapters.items() if name != adapter.name}

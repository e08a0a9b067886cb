"""OpenAI's cursor pagination over a list of objects with ids (a response's input items, a conversation's
items, files, batches)."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar

from frontend.errors import bad_request
from frontend.protocol.responses import Item, ItemList


class HasId(Protocol):
    @property
    def id(self) -> str | None: ...


T = TypeVar("T", bound=HasId)


def page(
    items: list[T], after: str | None, before: str | None, limit: int, order: Literal["asc", "desc"], owner: str
) -> tuple[list[T], bool]:
    """Up to `limit` objects strictly between the `after` and `before` cursors (ids), in `order` (asc: as
    `items` lists them, oldest first), and whether more follow; `owner` names whose objects they are when a
    cursor is unknown."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    ids = [item.id for item in ordered]
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise bad_request(f"no item '{cursor}' in {owner}", param=name)
    start = ids.index(after) + 1 if after is not None else 0
    end = ids.index(before) if before is not None else len(ordered)
    window = ordered[start:end]
    return window[:limit], len(window) > limit


def item_page(
    items: list[Item], after: str | None, before: str | None, limit: int, order: Literal["asc", "desc"], owner: str
) -> ItemList:
    return ItemList(**listing(*page(items, after, before, limit, order, owner)))


def listing(data: list[T], has_more: bool) -> dict[str, Any]:
    """The fields of an OpenAI list object holding `data`."""
    return {
        "data": data,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
        "has_more": has_more,
    }

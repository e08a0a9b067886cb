"""OpenAI's cursor pagination over a list of items (a response's input items, a conversation's items)."""

from __future__ import annotations

from typing import Literal

from frontend.errors import bad_request
from frontend.protocol.responses import Item, ItemList


def item_page(
    items: list[Item], after: str | None, before: str | None, limit: int, order: Literal["asc", "desc"], owner: str
) -> ItemList:
    """Up to `limit` items strictly between the `after` and `before` cursors (item ids), in `order` (asc:
    oldest first); `owner` names whose items they are when a cursor is unknown."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    ids = [item.id for item in ordered]
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise bad_request(f"no item '{cursor}' in {owner}", param=name)
    start = ids.index(after) + 1 if after is not None else 0
    end = ids.index(before) if before is not None else len(ordered)
    window = ordered[start:end]
    page = window[:limit]
    return ItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(window) > limit,
    )

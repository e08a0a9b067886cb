"""Tenants: with `--isolate-api-keys` every API key acts as its own tenant.

The request guard resolves the bearer token to its tenant id and sets `current_tenant` for the request
(tasks the request starts, such as background responses, inherit it). A tenant sees only the stored
responses it created, and its prompts share prefix-cache blocks only with its own: the engine's
`cache_salt` carries the tenant id, so another key's request can neither hit nor time those blocks.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

# The tenant of the request being served; None when keys are not isolated (everyone shares everything).
current_tenant: ContextVar[str | None] = ContextVar("current_tenant", default=None)


def tenant_of(api_key: str) -> str:
    """A stable id of an API key that does not reveal it (the store keeps this, never the key)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]


def tenant_cache_salt(cache_salt: str | None) -> str | None:
    """The engine's prefix-cache salt for this request: its tenant joined with its own salt, if any."""
    tenant = current_tenant.get()
    if tenant is None:
        return cache_salt
    return f"tenant:{tenant}:{cache_salt or ''}"


def visible_to_current_tenant(owner: str | None) -> bool:
    """Whether a stored record created by `owner` may be shown to the request being served."""
    tenant = current_tenant.get()
    return tenant is None or owner == tenant

"""Who may read what: the one rule every HTTP endpoint of `rag serve` applies, the MCP endpoint included.

>>> access = caller_access(request.headers.get("authorization"), options.api_key)   # ApiError 401 if refused
>>> access.allows("docs")

Today one optional bearer key guards everything: the right key (or no key configured) reads every collection.
Per-key collections replace :func:`caller_access` alone; its callers only ask :meth:`Access.allows`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from rag.server.errors import ApiError

__all__ = ["EVERYTHING", "Access", "caller_access"]


@dataclass(frozen=True)
class Access:
    """The collections one caller may read."""

    collections: frozenset[str] | None = None
    """None: every collection."""

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


EVERYTHING = Access()
"""A caller who may read every collection (a local process: `rag mcp` over stdio, `rag ask`)."""


def caller_access(authorization: str | None, api_key: str | None) -> Access:
    """What the sender of ``Authorization: authorization`` may read, given the server's key (None: no key is
    required); a missing or wrong key is an :class:`ApiError` 401."""
    if api_key is None:
        return EVERYTHING
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api_key.encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send `Authorization: Bearer KEY` (the server's RAG_API_KEY)",
            code="invalid_api_key",
        )
    return EVERYTHING

"""Who may read what: the one rule every HTTP endpoint of `rag serve` applies, the MCP endpoint included.

>>> grant = caller_grant(policy, request.headers.get("authorization"))   # ApiError 401 without a known key
>>> grant.can_read("docs"), grant.can_write("docs")

The keys and their collections are the application's :class:`rag.app.access.AccessPolicy` (one key that reads
everything, or a keys file scoping each key to collections); this module only reads the bearer key of a request.
"""

from __future__ import annotations

from rag.app.access import AccessPolicy, Grant
from rag.server.errors import ApiError

__all__ = ["LOCAL", "caller_grant", "signed_url"]

LOCAL = Grant.everything("local")
"""A caller who may read every collection: the assistant that started `rag mcp` on stdio, its only caller."""


def caller_grant(policy: AccessPolicy, authorization: str | None) -> Grant:
    """What the sender of ``Authorization: authorization`` may do; a missing or unknown key is an
    :class:`ApiError` 401."""
    scheme, _, key = (authorization or "").partition(" ")
    grant = policy.grant_for(key.strip() if scheme.lower() == "bearer" else None)
    if grant is None:
        raise ApiError(
            401,
            "missing or wrong API key: send `Authorization: Bearer KEY` (the server's RAG_API_KEY or a key of its "
            "API keys file)",
            code="invalid_api_key",
        )
    return grant


def signed_url(policy: AccessPolicy, grant: Grant, base_url: str, path: str) -> str:
    """``base_url + path`` as a URL a browser opens without the key: a page view's link (an answer's citation, a
    source's ``page_image_url``), signed for ``grant``'s holder (:meth:`AccessPolicy.sign_link`); plain when the
    server needs no key."""
    token = policy.sign_link(grant, path.split("?", 1)[0])
    if not token:
        return base_url + path
    return f"{base_url}{path}{'&' if '?' in path else '?'}access={token}"

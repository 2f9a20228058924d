"""Documents' ids: what every surface (HTTP, MCP, page views) names a document by, never its path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from rag.chunks import ChunkReader

__all__ = ["document_id", "find_document"]


def document_id(path: str) -> str:
    """A document's id on every surface (HTTP, MCP, page views): stable, opaque (no path in a URL), the same in
    every worker."""
    return "doc-" + hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def find_document(
    doc_id: str, collections: Iterable[str], reader_for: Callable[[str], ChunkReader]
) -> tuple[str, str] | None:
    """(collection, path) of the document ``doc_id`` among ``collections`` (those a caller may read); None when none
    holds it. Read from each collection's local index (its files in one indexed query), not the store."""
    for name in collections:
        for path in reader_for(name).sources():
            if document_id(path) == doc_id:
                return name, path
    return None

"""A sentence-transformers ``CrossEncoder`` in this process (``RAG_RERANK_MODEL``: a hub id such as
``BAAI/bge-reranker-v2-m3`` or a local folder), loaded on first use."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.models import resolve_snapshot
from rag.retrieval.rerankers.base import Reranker

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["CrossEncoderReranker"]


class CrossEncoderReranker(Reranker):
    """Scores each (query, passage) pair with a cross-encoder: one forward pass per pair, so the cost grows with the
    candidates scored (``RAG_RERANK_CANDIDATES``; bench/query.py measures it). Scores of a single-label model are
    its logit through a sigmoid (0 to 1), as sentence-transformers gives them."""

    backend = "cross-encoder"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        client: CrossEncoder | None = None,
    ) -> None:
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        """Tokens of query and passage read together; longer pairs are cut (a chunk is at most 512 embedder
        tokens, and a longer window costs CPU time for nothing)."""
        self._client = client
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model_name

    def warm_up(self) -> None:
        if self._client is not None:
            return
        with self._lock:
            if self._client is None:
                path = resolve_snapshot(self.model_name, setting="RAG_RERANK_MODEL")
                from sentence_transformers import CrossEncoder

                self._client = CrossEncoder(str(path), device=self.device, max_length=self.max_length)

    @property
    def client(self) -> CrossEncoder:
        self.warm_up()
        assert self._client is not None
        return self._client

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        scores = self.client.predict(
            [(query, text) for text in texts], batch_size=self.batch_size, show_progress_bar=False
        )
        return [float(value) for value in scores]

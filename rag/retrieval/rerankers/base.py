"""The rerank stage's interface: candidates in, scored candidates out.

Retrieval (dense and lexical, fused) finds candidates cheaply; a reranker reads each candidate together with the
question (a cross-encoder) and orders them again. Every backend gives :meth:`Reranker.score`; :meth:`Reranker.rerank`
is the same for all: a candidate's score is its best against the queries (a follow-up is retrieved with more than
one), ties keep retrieval's order, and each document keeps what retrieval said of it beside the new score.
Construction is instant; a model loads (or a server is checked) on :meth:`Reranker.warm_up`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from langchain_core.documents import Document

__all__ = ["IdentityReranker", "Reranker"]


class Reranker(ABC):
    """Scores (query, passage) pairs; higher is more relevant. Scores of one backend compare with each other (a
    relevance floor is a share of the best one), not across backends."""

    backend = "base"

    @property
    def name(self) -> str:
        """What a user configured (the model name), shown beside the figures it produced."""
        return self.backend

    @property
    def reorders(self) -> bool:
        """Whether :meth:`rerank` can change an order (the identity stage cannot)."""
        return True

    def warm_up(self) -> None:  # noqa: B027 -- optional: a backend with nothing to load keeps this
        """Load the model, or check the server, now (idempotent); otherwise done at the first :meth:`score`."""

    @abstractmethod
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in the order given."""

    def rerank(
        self, queries: Sequence[str], candidates: Sequence[Document], *, top_n: int | None = None
    ) -> list[Document]:
        """``candidates`` ordered by their best score against ``queries`` (at most ``top_n`` of them). Each document
        returned is a copy whose metadata holds ``rerank_score`` and, as ``score``, the same number (what later
        stages rank by); retrieval's own score stays as ``retrieval_score``."""
        if not candidates:
            return []
        texts = [document.page_content for document in candidates]
        best = [max(column) for column in zip(*(self.score(query, texts) for query in queries), strict=True)]
        order = sorted(range(len(candidates)), key=lambda i: (-best[i], i))  # ties: retrieval's order
        reranked = []
        for i in order[:top_n]:
            document = candidates[i]
            metadata = dict(document.metadata)
            metadata.setdefault("retrieval_score", metadata.get("score"))
            metadata["rerank_score"] = metadata["score"] = round(best[i], 6)
            reranked.append(Document(page_content=document.page_content, metadata=metadata, id=document.id))
        return reranked


class IdentityReranker(Reranker):
    """No rerank: retrieval's order as it is (the default)."""

    backend = "identity"

    @property
    def reorders(self) -> bool:
        return False

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [0.0] * len(texts)

    def rerank(
        self, queries: Sequence[str], candidates: Sequence[Document], *, top_n: int | None = None
    ) -> list[Document]:
        return list(candidates[:top_n])

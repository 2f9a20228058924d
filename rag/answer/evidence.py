"""The retrieval and rerank stages and the packing of what they found: the hits a prompt's evidence comes from,
best first, and that evidence packed to an exact token budget (:mod:`rag.answer.context`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from rag.answer.context import ContextAssembler, PackedContext, pack_context
from rag.answer.planning import join_rankings
from rag.chunks import ContextChunk
from rag.retrieval.rerankers.base import IdentityReranker

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from rag.chunks import ChunkReader
    from rag.llm.counting import ModelTokens
    from rag.retrieval.rerankers.base import Reranker

__all__ = ["EvidenceFinder"]


class EvidenceFinder:
    """Finds and packs a question's evidence: ``retriever`` (one ranking per query, joined) -> ``reranker`` (its
    best ``rerank_candidates`` scored again; only ``rerank_top_n`` kept when set) -> the relevance floor (hits under
    ``relevance_floor`` times the best score are left out past the top ``k``) -> packing, with neighbours read from
    ``reader`` (None: the hits are packed as they are), counted with ``tokens``."""

    def __init__(
        self,
        retriever: BaseRetriever,
        tokens: ModelTokens,
        *,
        reader: ChunkReader | None = None,
        reranker: Reranker | None = None,
        rerank_candidates: int = 20,
        rerank_top_n: int | None = None,
        relevance_floor: float = 0.0,
    ) -> None:
        self.retriever = retriever
        self.tokens = tokens
        self.reader = reader
        self.reranker = reranker if reranker is not None else IdentityReranker()
        self.rerank_candidates = rerank_candidates
        self.rerank_top_n = rerank_top_n
        self.relevance_floor = relevance_floor
        self._assembler = None
        if reader is not None:
            self._assembler = ContextAssembler(reader, tokens.count, mixtral_counts=tokens.counts_like_mixtral)

    def retrieve(
        self, queries: Sequence[str], *, budget: int, k: int, sources: list[str] | None = None
    ) -> list[Document]:
        """The hits the evidence is packed from, best first: retrieval deep enough to fill ``budget`` -> rerank ->
        the relevance floor."""
        depth = ContextAssembler.depth_for(budget, k)
        filters: dict[str, Any] = {"sources": sources} if sources else {}  # only our retriever takes sources
        found = join_rankings([list(self.retriever.invoke(query, k=depth, **filters)) for query in queries])[:depth]
        if self.reranker.reorders and found:
            head = self.reranker.rerank(queries, found[: self.rerank_candidates], top_n=self.rerank_top_n)
            # the deeper hits, never scored, follow in retrieval's order; a floor or top-n keeps only scored ones
            keep_tail = self.rerank_top_n is None and not self.relevance_floor
            found = head + (found[self.rerank_candidates :] if keep_tail else [])
        if not self.relevance_floor or not found:
            return found
        # hits far below the best one are noise: the budget is not filled with them (the top k always stay)
        best = max(float(d.metadata.get("score") or 0.0) for d in found)
        floor = self.relevance_floor * best
        return [d for i, d in enumerate(found) if i < k or float(d.metadata.get("score") or 0.0) >= floor]

    def pack(
        self, documents: Sequence[Document], budget: int, k: int, exclude: Collection[str] = frozenset()
    ) -> PackedContext:
        """``documents`` (best first) and their surroundings in ``budget`` tokens, chunks in ``exclude`` (given
        earlier in the conversation) left out."""
        if self._assembler is not None:
            return self._assembler.assemble(documents, budget, k=k, exclude=exclude)
        chunks = [ContextChunk.from_document(d) for d in documents]
        return pack_context([c for c in chunks if c.chunk_id not in exclude], budget, self.tokens.count)

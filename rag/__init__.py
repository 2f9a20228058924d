"""chinese-mixtral-rag: question answering over your own documents with Chinese-Mixtral-Instruct.

Importing ``rag`` is cheap: the heavy parts (torch, llama.cpp, Chroma) load when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rag.errors import (
    ConfigError,
    EmptyStoreError,
    ModelMismatchError,
    ModelNotFoundError,
    RagError,
    StoreError,
)
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.embeddings import SentenceTransformerEmbeddings
    from rag.llm import MixtralInstructLLM
    from rag.prompt import render_instruct_prompt
    from rag.store import ChunkStore
    from rag.tokens import MixtralTokenizer

__all__ = [
    "ChunkStore",
    "ConfigError",
    "EmptyStoreError",
    "MixtralInstructLLM",
    "MixtralTokenizer",
    "ModelMismatchError",
    "ModelNotFoundError",
    "RagError",
    "SentenceTransformerEmbeddings",
    "Settings",
    "StoreError",
    "render_instruct_prompt",
]

_LAZY = {
    "MixtralInstructLLM": "rag.llm",
    "MixtralTokenizer": "rag.tokens",
    "render_instruct_prompt": "rag.prompt",
    "SentenceTransformerEmbeddings": "rag.embeddings",
    "ChunkStore": "rag.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

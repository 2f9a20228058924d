"""The sentence-transformers backend (the default; torch): any sentence-transformers model, loaded on first use."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.models import resolve_snapshot
from rag.retrieval.embedders.base import Embedder, known_prompts

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

__all__ = ["SentenceTransformerEmbeddings"]


class SentenceTransformerEmbeddings(Embedder):
    """Embeds with a sentence-transformers model; normalised vectors (cosine = dot product).

    The weights load on first use (:meth:`warm_up`), never at construction. ``model`` may be a hub id
    (resolved as in :mod:`rag.models`) or a local folder; an already loaded ``SentenceTransformer`` can be passed
    as ``client``.
    """

    backend = "sentence-transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 32,
        client: SentenceTransformer | None = None,
        setting: str = "RAG_EMBEDDING_MODEL",
    ) -> None:
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._setting = setting
        self._client = client
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._counter: Any = None
        self._query_prompt, self._document_prompt = known_prompts(model)
        if client is not None:
            self._adopt_prompts(client)

    # -- loading -------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the model now (idempotent)."""
        if self._client is not None:
            return
        with self._lock:
            if self._client is None:
                path: Path = resolve_snapshot(self.model_name, setting=self._setting)
                from sentence_transformers import SentenceTransformer

                client = SentenceTransformer(str(path), device=self.device)
                self._adopt_prompts(client)
                self._client = client

    def _adopt_prompts(self, client: SentenceTransformer) -> None:
        prompts: dict[str, str] = getattr(client, "prompts", None) or {}
        self._query_prompt = prompts.get("query", self._query_prompt)
        self._document_prompt = prompts.get("document", prompts.get("passage", self._document_prompt))

    @property
    def client(self) -> SentenceTransformer:
        self.warm_up()
        assert self._client is not None
        return self._client

    @property
    def name(self) -> str:
        """The model's identity in a store: collections remember it and refuse vectors of another model."""
        return self.model_name

    @property
    def dimension(self) -> int:
        return int(self.client.get_embedding_dimension() or 0)

    @property
    def max_tokens(self) -> int:
        """Most tokens of document text the model reads without truncating (special tokens and prompt excluded)."""
        client = self.client
        limit = int(client.max_seq_length or 512)
        special = client.tokenizer.num_special_tokens_to_add(pair=False)
        prompt = self.count_tokens([self._document_prompt])[0] if self._document_prompt else 0
        return limit - special - prompt

    # -- tokens (the chunker's EmbedderTokenCounter) ---------------------------------------------------------------
    @property
    def _counting_tokenizer(self) -> Any:
        # A copy of its own: the chunker counts in the loader thread while encode() uses (and reconfigures:
        # padding, truncation) the model's tokenizer, and a fast tokenizer must not be used by two threads.
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self._counter = copy.deepcopy(self.client.tokenizer)
        return self._counter

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        with self._count_lock:
            encoded = self._counting_tokenizer(
                texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        with self._count_lock:
            encoded = self._counting_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"] if b > a]

    # -- embedding -----------------------------------------------------------------------------------------
    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        """Normalised embeddings as a float32 array (the fast path for ingestion)."""
        prompt = self._query_prompt if query else self._document_prompt
        kwargs: dict[str, Any] = {"prompt": prompt} if prompt else {}
        return self.client.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )

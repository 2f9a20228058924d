"""The sentence-transformers backend (the default; torch): any sentence-transformers model, loaded on first use."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError
from rag.models import resolve_snapshot
from rag.retrieval.embedders.base import Embedder, TokenizerCounts, known_prompts

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

__all__ = ["INT8_SUFFIX", "SentenceTransformerEmbeddings"]

INT8_SUFFIX = "#int8"
"""A model name ending in this runs (and was recorded) with int8 linear layers."""


def _int8(client: SentenceTransformer) -> SentenceTransformer:
    """``client`` with its linear layers quantised to int8 (dynamic quantisation, CPU)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces the move of this API to torchao
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # per output channel: per tensor moves MiniLM's vectors to cosine 0.95 of the originals, this to 0.98
        qconfig = {torch.nn.Linear: per_channel_dynamic_qconfig}
        return quantize_dynamic(client, qconfig, dtype=torch.qint8, inplace=True)


class SentenceTransformerEmbeddings(Embedder):
    """Embeds with a sentence-transformers model; normalised vectors (cosine = dot product).

    The weights load on first use (:meth:`warm_up`), never at construction. ``model`` may be a hub id
    (resolved as in :mod:`rag.models`) or a local folder; an already loaded ``SentenceTransformer`` can be passed
    as ``client``. ``quantization="int8"``: the linear layers run as int8 on the CPU (torch's dynamic quantisation, per
    output channel: weights quantised once at load, activations per batch), recorded in :attr:`name` as ``MODEL#int8``.
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
        quantization: str | None = None,
    ) -> None:
        model, marker, _ = model.partition(INT8_SUFFIX)
        quantization = quantization or ("int8" if marker else None)
        if quantization not in (None, "int8"):
            raise ConfigError(f"RAG_EMBEDDING_QUANTIZATION={quantization!r}: use int8, or leave it unset")
        if quantization and device not in (None, "cpu"):
            raise ConfigError(
                "int8 embeddings run on the CPU: unset RAG_EMBEDDING_DEVICE or RAG_EMBEDDING_QUANTIZATION"
            )
        self.quantization = quantization
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._setting = setting
        self._client = client
        self._lock = threading.Lock()
        self._counter: TokenizerCounts | None = None
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

                client = SentenceTransformer(str(path), device="cpu" if self.quantization else self.device)
                if self.quantization == "int8":
                    client = _int8(client)
                self._adopt_prompts(client)
                self._client = client

    def _adopt_prompts(self, client: SentenceTransformer) -> None:
        # sentence-transformers 6 always lists "query" and "document" prompts, empty unless the model's config names
        # them: an empty one must not hide the config's "passage" prompt (e5) or the family's known prompt.
        prompts: dict[str, str] = getattr(client, "prompts", None) or {}
        self._query_prompt = prompts.get("query") or self._query_prompt
        self._document_prompt = prompts.get("document") or prompts.get("passage") or self._document_prompt

    @property
    def client(self) -> SentenceTransformer:
        self.warm_up()
        assert self._client is not None
        return self._client

    @property
    def name(self) -> str:
        """The model's identity in a store: collections remember it and refuse vectors of another model."""
        return self.model_name + (INT8_SUFFIX if self.quantization == "int8" else "")

    @property
    def dimension(self) -> int:
        return int(self.client.get_embedding_dimension() or 0)

    @property
    def cpu_threads(self) -> int:
        import torch

        # torch, ONNX Runtime and OpenVINO (the exported backends) all default to one thread per physical core,
        # which is what torch reports unless the user set fewer (OMP_NUM_THREADS, torch.set_num_threads)
        return int(torch.get_num_threads())

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
    def _counts(self) -> TokenizerCounts:
        # A copy of its own: the chunker counts in the loader thread while encode() uses (and reconfigures:
        # padding, truncation) the model's tokenizer, and a fast tokenizer must not be used by two threads.
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self._counter = TokenizerCounts(copy.deepcopy(self.client.tokenizer))
        return self._counter

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._counts.count_tokens(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self._counts.token_spans(text)

    # -- embedding -----------------------------------------------------------------------------------------
    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        """Normalised embeddings as a float32 array (the fast path for ingestion)."""
        prompt = self._query_prompt if query else self._document_prompt
        kwargs: dict[str, Any] = {"prompt": prompt} if prompt else {}
        return self.client.encode(
            texts,
            # int8 activations are quantised with one scale per forward pass: in a batch, a text's vector would
            # depend on its neighbours (cosine 0.976 to itself alone). One text a pass keeps every vector the same
            # wherever it is embedded, and on 2 cores is as fast as batches (3x the float32 speed).
            batch_size=1 if self.quantization == "int8" else self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )

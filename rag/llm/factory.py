"""The backend factory (txtai style): a model name, a server URL or an injected client -> the backend that runs it.

Building a backend is instant: nothing loads until :meth:`rag.llm.backends.base.Backend.warm_up`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.llm.backends.base import Backend, BackendConfig
from rag.models import SPLIT_BUNDLED_MODELS, bundled_model_path
from rag.settings import BACKEND_NAMES

__all__ = ["infer_backend", "make_backend"]


def infer_backend(model: str, base_url: str | None = None, backend: str = "auto", client: Any = None) -> str:
    """The backend for a model name (txtai style): an explicit choice wins; then a server URL means
    ``openai``; an injected ``llama_cpp.Llama``, a ``.gguf`` name or a bundled GGUF mean ``llama_cpp``; a
    folder or a hub id (``owner/name``) means ``transformers``."""
    if backend != "auto":
        if backend not in BACKEND_NAMES:
            raise ConfigError(f"RAG_LLM_BACKEND={backend!r} is not a backend: use auto, {', '.join(BACKEND_NAMES)}")
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
    if name == "llama_cpp":
        from rag.llm.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(config)
    if name == "openai":
        from rag.llm.backends.openai import OpenAIBackend

        return OpenAIBackend(config)
    if name == "transformers":
        from rag.llm.backends.transformers import TransformersBackend

        return TransformersBackend(config)
    raise ConfigError(f"unknown LLM backend {name!r}: use {', '.join(BACKEND_NAMES)}")

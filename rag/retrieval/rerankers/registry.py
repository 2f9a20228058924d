"""The rerank backends, registered in one place: a backend is one module and one line in :data:`RERANKERS`.

The backend is inferred from what is configured (txtai style): a rerank server's URL -> ``server``; a model name
or folder -> ``cross-encoder`` (sentence-transformers); neither -> ``identity`` (retrieval's order). Building is
instant; nothing loads until the reranker's ``warm_up`` or first score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rag.errors import ConfigError
from rag.registry import Registry
from rag.retrieval.rerankers.base import IdentityReranker, Reranker

__all__ = ["RERANKERS", "RerankerSpec", "make_reranker", "register_reranker"]


@dataclass(frozen=True)
class RerankerSpec:
    """What the settings say of the rerank stage (``RAG_RERANK_*``)."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    device: str | None = None
    batch_size: int = 16
    timeout: float = 30.0


def _identity(spec: RerankerSpec) -> Reranker:
    return IdentityReranker()


def _cross_encoder(spec: RerankerSpec) -> Reranker:
    from rag.retrieval.rerankers.cross_encoder import CrossEncoderReranker

    if not spec.model:
        raise ConfigError(
            "the cross-encoder reranker needs a model: set RAG_RERANK_MODEL (e.g. BAAI/bge-reranker-v2-m3)"
        )
    return CrossEncoderReranker(spec.model, device=spec.device, batch_size=spec.batch_size)


def _server(spec: RerankerSpec) -> Reranker:
    from rag.retrieval.rerankers.server import RerankServerReranker

    if not spec.base_url:
        raise ConfigError("the rerank server backend needs its address: set RAG_RERANK_BASE_URL")
    if spec.device:
        raise ConfigError("RAG_RERANK_DEVICE applies to a cross-encoder in this process, not a rerank server: unset it")
    return RerankServerReranker(
        spec.model, spec.base_url, api_key=spec.api_key, batch_size=max(spec.batch_size, 32), timeout=spec.timeout
    )


RERANKERS: Registry[Callable[[RerankerSpec], Reranker]] = Registry(
    "rerank backend",
    "RAG_RERANK_BACKEND",
    {"identity": _identity, "cross-encoder": _cross_encoder, "server": _server},
)
"""Backend name -> builder (each imports its module only when called: construction stays instant). Add one with
``RERANKERS.register("name", "module:builder")`` or :func:`register_reranker`."""


def register_reranker(name: str, builder: Callable[[RerankerSpec], Reranker] | str) -> None:
    """Add (or replace) a backend: a builder, or ``"module:builder"`` imported at its first use."""
    RERANKERS.register(name, builder)


def infer_backend(spec: RerankerSpec) -> str:
    """The backend ``spec`` asks for without naming one."""
    if spec.base_url:
        return "server"
    return "cross-encoder" if spec.model else "identity"


def make_reranker(spec: RerankerSpec, backend: str | None = None) -> Reranker:
    """The reranker ``spec`` configures (``backend``: one of :data:`RERANKERS`; None: inferred)."""
    return RERANKERS.get(backend or infer_backend(spec))(spec)

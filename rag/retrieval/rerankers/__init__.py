"""The rerank stage: retrieval's candidates scored again with the question (a cross-encoder in this process, or a
rerank server), or left in retrieval's order (the default)."""

from rag.retrieval.rerankers.base import IdentityReranker, Reranker
from rag.retrieval.rerankers.registry import RERANKERS, RerankerSpec, make_reranker, register_reranker

__all__ = ["RERANKERS", "IdentityReranker", "Reranker", "RerankerSpec", "make_reranker", "register_reranker"]

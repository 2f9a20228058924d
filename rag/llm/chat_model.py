"""Chinese-Mixtral-Instruct as a LangChain chat model: :class:`ChatMixtralInstruct`.

>>> chat = ChatMixtralInstruct(model="model.gguf", max_tokens=256)        # instant: nothing loads
>>> chat.invoke([("system", "用中文回答。"), ("human", "长城有多长？")])      # AIMessage, usage_metadata set
>>> for chunk in chat.stream("你好"):                                     # AIMessageChunk pieces
...     print(chunk.content, end="")

The same fields and backends as :class:`rag.llm.adapter.MixtralInstructLLM` (llama.cpp on a GGUF, an
OpenAI-compatible server, transformers). Messages are rendered in the exact Mixtral-Instruct template (token ids
equal mistral-common's v1): system text folded into the first ``[INST]``, consecutive messages of one role merged
(the template alternates user and assistant). With ``prompt_format="native"`` the model's own chat template renders
them instead (SmolLM2's ChatML, a server's template).

Structured output (:meth:`ChatMixtralInstruct.with_structured_output`) constrains generation to the schema: a
llama.cpp grammar built from the JSON schema, or ``response_format`` for a server (llama.cpp's, vLLM). The
transformers backend cannot constrain its output and is refused with a message saying so. Tool calling is not
offered: Mixtral-Instruct v0.1's template has no tool turns.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel

from rag.errors import ConfigError
from rag.llm.backends.base import Backend, FormattedPrompt, Piece, PromptFormat
from rag.llm.core import Formatter, MixtralModelCore
from rag.llm.prompt import ChatMessage, Role

__all__ = ["ChatMixtralInstruct", "to_chat_messages"]

_ROLES: dict[str, Role] = {"system": "system", "human": "user", "user": "user", "ai": "assistant"}
#: Backends that can constrain generation to a JSON schema.
_STRUCTURED_BACKENDS = frozenset({"llama_cpp", "openai"})


class ChatMixtralInstruct(MixtralModelCore, BaseChatModel):
    """Chinese-Mixtral-Instruct (or any GGUF / server / transformers model) as a LangChain chat model.

    Construction is instant; the weights load on :meth:`warm_up` or the first call. The fields are
    :class:`rag.llm.core.MixtralModelCore`'s, shared with :class:`rag.llm.adapter.MixtralInstructLLM`.
    """

    @property
    def _llm_type(self) -> str:
        return "chinese-mixtral-instruct-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self._get_backend().ls_provider
        params["ls_model_name"] = kwargs.get("model", self.model)
        params["ls_model_type"] = "chat"
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def count_message_tokens(self, messages: Sequence[BaseMessage]) -> int:
        """Tokens the model reads for ``messages`` (BOS included), as rendered for generation."""
        return self.count_turn_tokens(to_chat_messages(messages))

    def count_turn_tokens(self, turns: Sequence[ChatMessage]) -> int:
        """Tokens the model reads for a conversation of :class:`rag.llm.prompt.ChatMessage` turns."""
        formatter = _conversation(list(turns), None)
        return formatter(self._get_backend(), self.effective_prompt_format).n_tokens

    # -- generation
    def _chunk(self, piece: Piece, text: list[str]) -> ChatGenerationChunk:
        """A piece as a chunk; the last one carries the usage and the response metadata."""
        if not piece.finish_reason and not piece.info:
            return ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
        info = {"finish_reason": piece.finish_reason, **piece.info}
        prompt_tokens = int(piece.info.get("prompt_tokens") or 0)
        completion = piece.info.get("completion_tokens")
        # llama.cpp does not report the tokens it wrote: the answer is counted with the model's own tokenizer
        output_tokens = int(completion) if completion is not None else self.tokenizer.count("".join(text))
        usage = UsageMetadata(
            input_tokens=prompt_tokens, output_tokens=output_tokens, total_tokens=prompt_tokens + output_tokens
        )
        cached = piece.info.get("cached_prompt_tokens")
        if cached is not None:
            usage["input_token_details"] = {"cache_read": int(cached)}
        metadata = {"model_name": self.model, "finish_reason": piece.finish_reason, **piece.info}
        message = AIMessageChunk(
            content=piece.text, usage_metadata=usage, response_metadata=metadata, chunk_position="last"
        )
        return ChatGenerationChunk(message=message, generation_info=info)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        formatter = _conversation(to_chat_messages(messages), kwargs.get("json_schema"))
        text: list[str] = []
        for piece in self._pieces(formatter, stop, kwargs):
            text.append(piece.text)
            chunk = self._chunk(piece, text)
            if run_manager and piece.text:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        formatter = _conversation(to_chat_messages(messages), kwargs.get("json_schema"))
        text: list[str] = []
        async for piece in self._apieces(formatter, stop, kwargs):
            text.append(piece.text)
            chunk = self._chunk(piece, text)
            if run_manager and piece.text:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    # -- structured output
    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose output is ``schema`` (a pydantic class: an instance; a JSON schema or TypedDict: a
        dict), the model constrained to it as it writes (llama.cpp grammar, a server's ``response_format``).

        ``method``: ``json_schema`` (the default) and ``function_calling`` both constrain to the schema (there is
        no tool calling to use instead); ``json_mode`` constrains to any JSON object (``schema`` optional). ``strict``
        is accepted for compatibility: a grammar is always strict. Raises :class:`rag.errors.ConfigError` for the
        transformers backend, which cannot constrain its output."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(f"unknown method {method!r}: use json_schema, function_calling or json_mode")
        if self.backend_name not in _STRUCTURED_BACKENDS:
            raise ConfigError(
                f"structured output needs a backend that can constrain generation (llama_cpp or openai), not "
                f"{self.backend_name}: use a GGUF or an OpenAI-compatible server"
            )
        if method == "json_mode" or schema is None:
            if method != "json_mode":
                raise ValueError("a schema is needed (or method='json_mode' for any JSON object)")
            json_schema: dict[str, Any] = {"type": "object"}
            parser: Runnable[Any, Any] = JsonOutputParser()
            if schema is not None and isinstance(schema, type) and issubclass(schema, BaseModel):
                parser = PydanticOutputParser(pydantic_object=schema)
            traced = json_schema
        else:
            json_schema, parser = _schema_and_parser(schema)
            traced = convert_to_json_schema(schema)  # what LangSmith and callbacks are told
        bound = self.bind(
            json_schema=json_schema, ls_structured_output_format={"kwargs": {"method": method}, "schema": traced}
        )
        if not include_raw:
            return bound | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=bound) | parsed.with_fallbacks([fallback], exception_key="parsing_error")


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as the turns the Mixtral-Instruct template takes: system messages joined into one, first;
    consecutive messages of one role merged with a blank line (the template alternates user and assistant)."""
    system: list[str] = []
    turns: list[ChatMessage] = []
    for message in messages:
        role = _ROLES.get(message.type)
        if role is None:
            raise ConfigError(
                f"a {message.type!r} message cannot be rendered: Mixtral-Instruct has system, user and assistant "
                "turns only (no tool calling)"
            )
        text = message.text
        if role == "system":
            system.append(text)
        elif turns and turns[-1].role == role:
            turns[-1] = ChatMessage(role, f"{turns[-1].content}\n\n{text}")
        else:
            turns.append(ChatMessage(role, text))
    if not turns or turns[0].role != "user":
        turns.insert(0, ChatMessage("user", ""))  # the template starts with a user turn
    return ([ChatMessage("system", "\n\n".join(system))] if system else []) + turns


def _conversation(turns: list[ChatMessage], json_schema: dict[str, Any] | None) -> Formatter:
    if json_schema is not None:  # the grammar forces the shape; the instruction tells the model what to fill in
        instruction = f"Answer with one JSON object that follows this JSON schema:\n{json.dumps(json_schema)}"
        if turns and turns[0].role == "system":
            turns = [ChatMessage("system", f"{turns[0].content}\n\n{instruction}"), *turns[1:]]
        else:
            turns = [ChatMessage("system", instruction), *turns]

    def format_conversation(backend: Backend, prompt_format: PromptFormat) -> FormattedPrompt:
        return backend.format_chat(turns, "mixtral" if prompt_format == "raw" else prompt_format)

    return format_conversation


def _schema_and_parser(schema: Mapping[str, Any] | type) -> tuple[dict[str, Any], Runnable[Any, Any]]:
    """The JSON schema to constrain generation with, and the parser of its output (a pydantic class: instances)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema(), PydanticOutputParser(pydantic_object=schema)
    try:
        from pydantic import v1
    except ImportError:  # pragma: no cover - pydantic without its v1 shim
        v1 = None  # type: ignore[assignment]
    if v1 is not None and isinstance(schema, type) and issubclass(schema, v1.BaseModel):
        return schema.schema(), PydanticOutputParser(pydantic_object=schema)
    converted = convert_to_json_schema(dict(schema) if isinstance(schema, Mapping) else schema)
    return converted, JsonOutputParser()

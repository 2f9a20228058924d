"""The requests `rag serve` reads, written by us (responses are the ``openai`` package's own types).

Unknown fields are accepted and ignored (clients send ``stream_options``, ``tool_servers``, ``user``, ...); our own
options live under one namespaced field, ``rag``, which clients send as ``extra_body={"rag": {...}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChunksRequest",
    "EmbeddingsRequest",
    "RagExtra",
    "StreamOptions",
]


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type in ("text", "input_text"))


class RagExtra(BaseModel):
    """Our options, under ``"rag"`` in the request body."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=1, le=100, description="Top hits expanded into passages first.")
    sources: list[str] | None = Field(
        default=None, description="Only passages of these files (file names, paths as ingested, or folders)."
    )
    include_sources: bool = Field(default=True, description="Send the sources with the answer.")
    retrieval: bool = Field(default=True, description="False: the model alone, without the documents.")
    max_context_tokens: int | None = Field(default=None, ge=1, description="Most tokens of evidence.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A collection's id from /v1/models (e.g. rag-docs), or the bare model's.")
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    rag: RagExtra | None = None

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_strings(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChunksRequest(BaseModel):
    """``POST /v1/chunks``: retrieval only."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A collection's id from /v1/models (e.g. rag-docs).")
    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=100)
    sources: list[str] | None = None


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings`` with the collection's embedder."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] = Field(description="Text or texts to embed.")
    input_type: Literal["query", "passage", "document"] | None = Field(
        default=None, description="query: with the model's query prompt; passage/document (default): as stored."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}

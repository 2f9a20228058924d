"""What the chain takes and returns, as types LangChain can show: ``chain.get_input_jsonschema()``,
``chain.get_output_jsonschema()`` and ``chain.as_tool()`` read them.

The chain also accepts a bare question string, and LangChain messages in ``chat_history``; the types describe the
JSON a tool call or an HTTP client sends, and the dict the chain returns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RagAnswer", "RagOptions", "RagQuestion", "RagSource"]


class RagOptions(BaseModel):
    """Settings of one question (unset: the chain's own)."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=1, le=100, description="Top hits expanded into passages first.")
    max_context_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens of evidence in the prompt (the window's room at most)."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Sampling temperature (0: greedy).")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens in the answer.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    sources: list[str] | None = Field(
        default=None,
        description="Only passages of these files: file names, paths as ingested, or folders (and what is below).",
    )


class RagQuestion(BaseModel):
    """A question about the ingested documents, with the conversation so far."""

    question: str = Field(description="The question, in Chinese or English.")
    chat_history: list[tuple[Literal["user", "assistant"], str]] = Field(
        default_factory=list,
        description="Earlier turns, oldest first, as (role, text) pairs; LangChain messages are accepted too.",
    )
    system: str | None = Field(
        default=None, description="Instructions of the caller (a system message), put before the chain's own."
    )
    options: RagOptions | None = Field(default=None, description="Settings of this question only.")


class RagSource(BaseModel):
    """A passage the answer rests on (or, when it cites none, one of the closest ones)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    n: int
    """Its number in the prompt: the ``[n]`` the answer cites."""
    source: str
    """The file as it was given to ``ingest``."""
    file_name: str
    page: int | None
    heading: str
    """The heading path above the passage, outermost first, joined with ' > '."""
    chunk_id: str
    chunk_ids: list[str]
    score: float
    text: str
    """The passage: an exact slice of the file's extracted text."""
    cited: bool
    """Whether the answer cites it (False: the answer cites nothing and this is one of the closest passages)."""
    table_header: str | None = None
    """The header row of the table the passage continues (absent otherwise)."""
    ocr_confidence: float | None = None
    """Read by OCR from a scan: the recogniser's lowest confidence in it (absent for a text layer)."""
    low_confidence: bool | None = None
    """Read by OCR with a confidence under 0.6 (absent for a text layer)."""


class RagAnswer(BaseModel):
    """The chain's output, a dict with these keys (streamed: ``answer`` in pieces, then the other keys once)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    answer: str
    sources: list[RagSource]
    standalone_question: str
    """The question made standalone from the conversation (the question itself without one)."""
    context_tokens: int
    """Tokens of evidence in the prompt."""
    answerability: float | None = None
    """Where the answerability check ran (``RAG_ANSWERABILITY_THRESHOLD``): the model's "no" against its "yes" when
    asked whether the evidence holds the answer, 0 to 1 (absent otherwise)."""

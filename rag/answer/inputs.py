"""The first stage: what the chain is asked. A question string, ``{"question", "chat_history", "system", "options"}``
or a :class:`rag.answer.schemas.RagQuestion` becomes one :class:`QuestionInput`; bad input is a
:class:`rag.errors.ConfigError` naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rag.answer.schemas import RagOptions, RagQuestion
from rag.errors import ConfigError
from rag.llm.prompt import ChatMessage, normalize_messages

__all__ = ["QuestionInput", "read_input", "read_options", "read_question", "read_system"]


@dataclass(frozen=True)
class QuestionInput:
    """One question as the chain reads it."""

    question: str
    history: list[ChatMessage]
    """The conversation before it, system messages left out (they are :attr:`system`)."""
    system: str
    """The caller's own instructions."""
    options: RagOptions


def read_question(inputs: Any) -> QuestionInput:
    question, history = read_input(inputs)
    return QuestionInput(question, history, read_system(inputs), read_options(inputs))


def read_input(inputs: Any) -> tuple[str, list[ChatMessage]]:
    """(question, history) from a question string, ``{"question", "chat_history"}`` or a :class:`RagQuestion`."""
    if isinstance(inputs, RagQuestion):
        inputs = {"question": inputs.question, "chat_history": inputs.chat_history}
    if isinstance(inputs, str):
        question, history = inputs, []
    elif isinstance(inputs, dict):
        question = inputs.get("question") or inputs.get("input") or ""
        history = normalize_messages(inputs.get("chat_history") or inputs.get("history") or [])
    else:
        kind = type(inputs).__name__
        raise TypeError(f"the chain takes a question or {{'question', 'chat_history'}}, not {kind}")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("the question is empty: ask something")
    return question.strip(), [m for m in history if m.role != "system"]


def read_system(inputs: Any) -> str:
    """The caller's instructions: the input's ``system`` and any system messages of its ``chat_history``."""
    if isinstance(inputs, RagQuestion):
        return inputs.system or ""
    if not isinstance(inputs, dict):
        return ""
    parts = [str(inputs.get("system") or "")]
    history = inputs.get("chat_history") or inputs.get("history") or []
    parts += [m.content for m in normalize_messages(history) if m.role == "system"]
    return "\n\n".join(part.strip() for part in parts if part.strip())


def read_options(inputs: Any) -> RagOptions:
    """The per-question ``options`` of a dict input (none for a string)."""
    raw = inputs.options if isinstance(inputs, RagQuestion) else None
    if isinstance(inputs, dict):
        raw = inputs.get("options")
    if raw is None:
        return RagOptions()
    if isinstance(raw, RagOptions):
        return raw
    try:
        return RagOptions.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid options ({problems}): see RagOptions for the fields") from None

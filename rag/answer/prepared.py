"""What the chain decides before generation: one :class:`PreparedQuestion`, handed from the layout stage to the
answer stream (and to the answer service, which shows its figures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rag.answer.context import PackedContext
from rag.llm.prompt import ChatMessage

__all__ = ["PreparedQuestion"]


@dataclass
class PreparedQuestion:
    """Everything decided before generation."""

    question: str
    standalone_question: str
    history: list[ChatMessage]
    """The history that fits (oldest turns dropped when it did not)."""
    packed: PackedContext
    prompt: str
    """The prompt as the model's prompt format renders it (what an ``LLM`` is given)."""
    prompt_tokens: int
    budget: int
    notes: list[str] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    """The same prompt as chat messages (what a chat model is given)."""
    llm_kwargs: dict[str, Any] = field(default_factory=dict)
    """This question's generation settings (temperature, max_tokens, seed)."""
    system: str = ""
    """The caller's own instructions."""
    conversation: list[ChatMessage] = field(default_factory=list)
    """The history as the caller sent it (all of it): with the question and the answer, the next turn's key."""
    follows_up: bool = False
    """The prompt extends the previous turn's (its evidence kept in place, new passages after it)."""
    reused_tokens: int = 0
    """Prompt tokens the previous turn already made the model read (llama.cpp keeps them in its cache)."""
    first_block: int | None = None
    """How many of the passages the prompt's first message holds (a follow-up's; None: all of them)."""
    numbered: int = 0
    """The highest passage number the conversation has given, dropped passages included (a follow-up's)."""

    @property
    def passages(self) -> list[dict[str, Any]]:
        return [p.to_source() for p in self.packed.passages]

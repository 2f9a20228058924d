"""The prompt layout stage: messages as the model is given them, counted exactly, and evidence fitted into the
window by one re-packing loop (a fresh prompt and a follow-up's extension both use it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from rag.answer.context import PackedContext, pack_context
from rag.answer.conversation import flatten
from rag.llm.prompt import ChatMessage, render_instruct_prompt

if TYPE_CHECKING:
    from rag.llm.counting import ModelTokens

__all__ = ["FittedPrompt", "PromptLayout", "langchain_messages"]

#: Re-packings tried before a prompt is given up on: each one shrinks the evidence by what overflowed, so the
#: second almost always fits (the first can miss by the few tokens where evidence meets the prompt text).
_FIT_ATTEMPTS = 3


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits the window with its answer reserve, and the evidence it holds."""

    packed: PackedContext
    messages: list[ChatMessage]
    prompt: str
    """As the model's prompt format renders it (what an ``LLM`` is given; shown for a chat model)."""
    tokens: int
    """What the model reads for it."""


class PromptLayout:
    """Renders and counts prompts for one model: a chat model is given messages (counted with its template); an
    LLM one prompt string that grows at the end only, as the conversation does (Mixtral's template, or flat)."""

    def __init__(self, tokens: ModelTokens, *, chat: bool) -> None:
        self.tokens = tokens
        self.chat = chat

    def render(self, messages: list[ChatMessage]) -> tuple[str, int]:
        """``messages`` as the model is given them and the tokens it reads for them."""
        tokens = self.tokens
        if tokens.prompt_format == "mixtral":
            prompt = render_instruct_prompt(messages)
        elif self.chat:
            prompt = "\n\n".join(m.content for m in messages)  # shown only: the chat model gets the messages
        else:
            prompt = flatten(messages)
        count = tokens.count_messages(messages) if self.chat else tokens.count_prompt(prompt)
        return prompt, count

    def fit(
        self, packed: PackedContext, messages_for: Callable[[PackedContext], list[ChatMessage]], reserve: int
    ) -> FittedPrompt | None:
        """``messages_for(packed)`` within the window and ``reserve`` answer tokens: where the exact count overflows,
        the evidence is packed again smaller by the overflow; None when it still does not fit."""
        for _ in range(_FIT_ATTEMPTS):
            messages = messages_for(packed)
            prompt, count = self.render(messages)
            excess = count + reserve - self.tokens.context_window
            if excess <= 0:
                return FittedPrompt(packed, messages, prompt, count)
            smaller = max(0, packed.tokens - excess - 2)
            packed = pack_context([p.as_chunk() for p in packed.passages], smaller, self.tokens.count)
        return None


def langchain_messages(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    kinds: dict[str, type[BaseMessage]] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m.role](m.content) for m in messages]

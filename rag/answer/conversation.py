"""Follow-ups that extend the previous turn's prompt, so llama.cpp reuses its KV cache through the chain.

A conversation's prompt grows at the end only: the instructions and the first question's evidence, the question,
the answer, then for each follow-up one more user message with the passages that are new for it (numbered after
the ones already given) and the question. The evidence already given stays where it was, so a follow-up's prompt
starts with the whole previous prompt and its answer: only the new message is read. Where the follow-up's own best
passages do not fit after it, the least relevant passages of the first question's evidence are dropped from its end
(:meth:`ConversationLayout.without_tail`): what stays is still a prefix of the cached prompt, and only the turns after
the cut are read again. The rewrite that makes a follow-up standalone is asked for at the end of that same prompt, so
it does not evict the cache either.

The chain stays stateless for its callers: :class:`LayoutMemory` remembers the last prompts by the conversation
that led to them (system text, then every turn as the caller sends it back), so a UI, ``rag serve`` or a LangChain
app that passes the history gets the reuse without keeping anything.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rag.answer.context import Passage, render_context
from rag.answer.qa_prompt import is_chinese
from rag.llm.prompt import ChatMessage

__all__ = [
    "ConversationLayout",
    "LayoutMemory",
    "flatten",
    "follow_up_message",
    "renumbered",
    "rewrite_follow_up_message",
]


@dataclass(frozen=True)
class ConversationLayout:
    """The prompt of a conversation through its last answer."""

    messages: list[ChatMessage]
    """System (instructions and the first evidence), then user and assistant turns, ending with the answer."""
    passages: list[Passage]
    """Every passage given so far, numbered 1..N in the order given."""
    evidence_tokens: int
    """Tokens of all the evidence given so far."""
    tokens: int = 0
    """Tokens the model has read and written for it (the prompt and the answer): what its cache holds."""
    first_block: int | None = None
    """How many of :attr:`passages` the first message holds (the first question's evidence); None: all of them."""
    numbered: int = 0
    """The highest passage number given so far, those of dropped passages included."""

    @property
    def next_number(self) -> int:
        """The number a new passage gets: after every number given so far (dropped ones included, so that a marker
        in an earlier answer never comes to mean another passage)."""
        return max([self.numbered, *(passage.n for passage in self.passages)]) + 1

    def without_tail(self, keep: int, count: Callable[[str], int]) -> ConversationLayout | None:
        """This conversation with only the first ``keep`` passages of the first question's evidence (files come in
        the order of their best hit, so the least relevant go). The prompt up to the cut is unchanged, so the
        model's cache keeps it; the turns after it are read again. None where nothing would go, or where the first
        message does not end with that evidence (a restarted conversation's transcript follows it). ``count``: the
        model's token count; :attr:`tokens` becomes 0 (the caller knows what the model reuses)."""
        block = self.passages if self.first_block is None else self.passages[: self.first_block]
        first = self.messages[0] if self.messages else None
        whole = render_context(block)
        if first is None or not whole or not first.content.endswith(whole) or not 0 <= keep < len(block):
            return None
        kept = block[:keep]
        text = render_context(kept)
        return replace(
            self,
            messages=[ChatMessage(first.role, first.content[: len(first.content) - len(whole)] + text),
                      *self.messages[1:]],
            passages=[*kept, *self.passages[len(block):]],
            evidence_tokens=max(0, self.evidence_tokens - count(whole) + (count(text) if text else 0)),
            tokens=0,
            first_block=keep,
            numbered=self.next_number - 1,
        )  # fmt: skip


def conversation_key(system: str, turns: Sequence[ChatMessage]) -> str:
    """The identity of a conversation as its caller sends it: the system text and every turn, whitespace trimmed."""
    digest = hashlib.sha256(system.strip().encode("utf-8", "surrogatepass"))
    for turn in turns:
        digest.update(b"\x1e" + turn.role.encode() + b"\x1f" + turn.content.strip().encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class LayoutMemory:
    """The last ``size`` conversations' layouts, by :func:`conversation_key` (thread-safe, least recent dropped)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._layouts: OrderedDict[str, ConversationLayout] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, system: str, turns: Sequence[ChatMessage]) -> ConversationLayout | None:
        key = conversation_key(system, turns)
        with self._lock:
            layout = self._layouts.get(key)
            if layout is not None:
                self._layouts.move_to_end(key)
            return layout

    def put(self, system: str, turns: Sequence[ChatMessage], layout: ConversationLayout) -> None:
        key = conversation_key(system, turns)
        with self._lock:
            self._layouts[key] = layout
            self._layouts.move_to_end(key)
            while len(self._layouts) > self.size:
                self._layouts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._layouts)


def follow_up_message(question: str, new_context: str) -> str:
    """The user message of a follow-up: the passages new for it (when there are), then the question."""
    chinese = is_chinese(question)
    label = "问题：" if chinese else "Question: "
    if not new_context:
        return label + question
    heading = "更多文档片段：\n\n" if chinese else "More passages:\n\n"
    return f"{heading}{new_context}\n\n{label}{question}"


def rewrite_follow_up_message(question: str) -> str:
    """Asked at the end of the conversation's own prompt: the follow-up as a standalone question."""
    if is_chinese(question):
        return (
            "先不要回答。把这个追问改写成一个不依赖上下文、可以单独理解的完整问题，只输出改写后的问题。"
            f"\n\n追问：{question}"
        )
    return (
        "Do not answer yet. Rewrite this follow-up as a standalone question that can be understood without the "
        f"conversation. Output only the rewritten question.\n\nFollow-up question: {question}"
    )


def flatten(messages: Sequence[ChatMessage]) -> str:
    """The conversation as one instruction, for a model whose own template wraps a single user message
    (``prompt_format="native"`` through a string): each part after the one before, so it grows at the end only."""
    chinese = any(is_chinese(m.content) for m in messages if m.role == "user")
    assistant = "助手：" if chinese else "Assistant: "
    return "\n\n".join(f"{assistant}{m.content}" if m.role == "assistant" else m.content for m in messages)


def renumbered(passages: Sequence[Passage], first: int) -> list[Passage]:
    """``passages`` numbered from ``first`` on (new passages after those already given)."""
    return [replace(passage, n=first + i) for i, passage in enumerate(passages)]

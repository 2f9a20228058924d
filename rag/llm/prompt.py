"""The Mixtral-Instruct prompt template, as a pure function.

Chinese-Mixtral-Instruct keeps Mixtral-8x7B-Instruct-v0.1's template (mistral-common's *v1* instruct
tokenizer)::

    <s>[INST] instruction [/INST] answer</s>[INST] follow-up [/INST]

* ``<s>`` and ``</s>`` stand for the special BOS and EOS **tokens** (ids 1 and 2), never for the literal
  characters: every tokenizer in this package (:class:`rag.llm.tokenizer.MixtralTokenizer`, the llama.cpp and
  transformers backends of :class:`rag.llm.adapter.MixtralInstructLLM`) maps exactly these two markers to the special
  ids and tokenizes everything between them as plain text, with SentencePiece's leading space. That is why no
  space is written after ``<s>`` or ``</s>``: the tokenizer adds it (``▁[INST]``), as mistral-common does.
* ``[INST]`` and ``[/INST]`` are plain text (several ordinary tokens each).
* The template has no system role: a system message is put at the start of the *first* user instruction,
  followed by a blank line (``system + "\\n\\n" + user``), as mistral-common's v1 tokenizer does.
* After the optional system message, turns alternate user / assistant, starting with the user. A conversation
  that ends with a user turn ends with ``[/INST]``: the model writes the answer next. One that ends with an
  assistant turn is closed with ``</s>`` (history, few-shot examples).
* Literal ``<s>`` / ``</s>`` inside message text (HTML strike-through tags in a document, say) must not become
  control tokens, or a retrieved document could end the instruction. The renderer writes them with an
  invisible marker (U+2063 after ``<``) that the tokenizers of this package turn back into the literal
  characters, so the token ids still equal mistral-common's (which encodes such text as plain pieces).

The token ids of ``render_instruct_prompt(conversation)`` (through any of this package's tokenizers) equal
``MistralTokenizer.v1().encode_chat_completion(...)`` of the same conversation; tests/llm checks this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BOS",
    "EOS",
    "ChatMessage",
    "Role",
    "normalize_messages",
    "render_instruct_prompt",
    "split_special",
    "unguard",
    "wrap_instruction",
]

BOS = "<s>"
"""Marker of the BOS special token in a rendered prompt."""
EOS = "</s>"
"""Marker of the EOS special token in a rendered prompt."""

#: U+2063 INVISIBLE SEPARATOR, put after "<" of a literal "<s>"/"</s>" in message text (see the module
# docstring).
_GUARD = "\u2063"
_LITERAL = {BOS: "<" + _GUARD + "s>", EOS: "<" + _GUARD + "/s>"}

Role = Literal["system", "user", "assistant"]

_ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: Role
    """``system`` (at most one, first), ``user`` or ``assistant``."""
    content: str
    """The text of the turn."""


def normalize_messages(messages: Iterable[Any]) -> list[ChatMessage]:
    """Accept :class:`ChatMessage`, ``(role, content)`` pairs, ``{"role", "content"}`` dicts or LangChain
    messages.

    Roles ``human``/``ai`` (LangChain's names) map to ``user``/``assistant``.
    """
    result: list[ChatMessage] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            result.append(message)
            continue
        if isinstance(message, tuple) and len(message) == 2:
            role, content = message
        elif isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        elif hasattr(message, "type") and hasattr(message, "content"):  # langchain_core BaseMessage
            role, content = message.type, message.content
        else:
            raise TypeError(f"cannot read a chat message from {message!r}")
        canonical = _ROLE_ALIASES.get(str(role).lower())
        if canonical is None:
            raise ValueError(f"unknown role {role!r}: use system, user or assistant")
        if not isinstance(content, str):
            raise TypeError(f"message content must be text, got {type(content).__name__}")
        result.append(ChatMessage(canonical, content))
    return result


def _guard(text: str) -> str:
    return text.replace(BOS, _LITERAL[BOS]).replace(EOS, _LITERAL[EOS])


def unguard(text: str) -> str:
    """Undo :func:`_guard`: the literal text that the tokenizer must encode as plain pieces."""
    return text.replace(_LITERAL[BOS], BOS).replace(_LITERAL[EOS], EOS)


def render_instruct_prompt(messages: Sequence[Any]) -> str:
    """Render a conversation in the Mixtral-Instruct template (see the module docstring for every rule).

    >>> render_instruct_prompt([("system", "Answer briefly."), ("user", "你好"), ("assistant", "你好！"),
    ...                         ("user", "谢谢")])
    '<s>[INST] Answer briefly.\\n\\n你好 [/INST] 你好！</s>[INST] 谢谢 [/INST]'

    Raises ``ValueError`` when the turns do not alternate user/assistant starting with the user, when a system
    message is not first, or when there is no user turn.
    """
    turns = normalize_messages(messages)
    system: str | None = None
    if turns and turns[0].role == "system":
        system, turns = turns[0].content, turns[1:]
    if not turns:
        raise ValueError("a Mixtral-Instruct conversation needs at least one user message")
    parts = [BOS]
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            where = "a system message may only come first" if turn.role == "system" else "turns must alternate"
            raise ValueError(
                f"message {index + (1 if system is not None else 0)} has role {turn.role!r}, expected "
                f"{expected!r}: "
                f"{where} (user, assistant, user, ...)"
            )
        content = _guard(turn.content)
        if turn.role == "user":
            if index == 0 and system:
                content = _guard(system) + "\n\n" + content
            parts.append(f"[INST] {content} [/INST]")
        else:
            parts.append(f" {content}{EOS}")
    return "".join(parts)


def wrap_instruction(prompt: str) -> str:
    """A plain prompt as one user instruction; an already rendered one (starting with ``<s>``) as it is."""
    if prompt.startswith(BOS):
        return prompt
    return render_instruct_prompt([ChatMessage("user", prompt)])


def split_special(prompt: str) -> list[tuple[bool, str]]:
    """Split a rendered prompt into ``(is_special, text)`` pieces: ``(True, "<s>")``, ``(False, "[INST]
    ...")``.

    Text pieces are un-guarded (the literal text to encode as plain pieces); empty pieces are dropped.
    """
    pieces: list[tuple[bool, str]] = []
    position = 0
    while position < len(prompt):
        bos = prompt.find(BOS, position)
        eos = prompt.find(EOS, position)
        candidates = [found for found in (bos, eos) if found >= 0]
        if not candidates:
            pieces.append((False, unguard(prompt[position:])))
            break
        start = min(candidates)
        marker = BOS if start == bos else EOS
        if start > position:
            pieces.append((False, unguard(prompt[position:start])))
        pieces.append((True, marker))
        position = start + len(marker)
    return pieces

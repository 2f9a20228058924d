"""What the chain tells the reader about how it built a prompt: English text that also carries a code and its
figures, so a UI can say it in the reader's language (``ui/i18n.py``) while logs, ``rag ask --json`` and the HTTP
API keep the plain English string."""

from __future__ import annotations

from typing import Any

__all__ = ["Note", "conversation_restarted", "history_trimmed", "wait_limited"]


class Note(str):
    """A note's English text; :attr:`code` names it and :attr:`figures` holds the numbers it quotes."""

    code: str
    figures: dict[str, Any]

    def __new__(cls, code: str, text: str, **figures: Any) -> Note:
        note = super().__new__(cls, text)
        note.code = code
        note.figures = figures
        return note


def history_trimmed(dropped: int) -> Note:
    return Note("history_trimmed", f"dropped the {dropped} oldest turns of the conversation to fit the window",
                dropped=dropped)  # fmt: skip


def wait_limited(cap: int, room: int, max_wait_s: float, tokens_per_s: float) -> Note:
    text = (
        f"{cap:,} of {room:,} context tokens: limited by the {max_wait_s:g} s wait for the first token "
        f"(this machine reads about {tokens_per_s:,.0f} prompt tokens/s); raise max_wait_s (RAG_MAX_WAIT_S) "
        "for more evidence"
    )
    return Note("wait_limited", text, cap=cap, room=room, max_wait_s=max_wait_s, tokens_per_s=tokens_per_s)


def conversation_restarted() -> Note:
    return Note("conversation_restarted", "the window is full: the conversation's evidence starts afresh")

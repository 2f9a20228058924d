"""The evidence budget stage: how many tokens of evidence a prompt may hold. One formula for a fresh prompt and a
follow-up: the room the window leaves after what else the model reads and the answer's reserve, at most the
question's limit, cut to what the model reads before its first token within the wait cap."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rag.answer.notes import history_trimmed, wait_limited
from rag.errors import ContextOverflowError
from rag.llm.prompt import ChatMessage

if TYPE_CHECKING:
    from rag.llm.counting import ModelTokens
    from rag.llm.speed import PromptSpeed

__all__ = ["MIN_EVIDENCE", "EvidenceBudget"]

#: Below this many tokens of room for evidence, older turns of the history are dropped.
MIN_EVIDENCE = 256
#: Tokens kept free besides the answer reserve: the evidence joins the prompt text at two boundaries.
_SAFETY = 8


class EvidenceBudget:
    """The budget for one model: its window and answer reserve (``tokens``), how fast it reads prompts here
    (``prompt_speed``, measured) and the longest wait for the first token (``max_wait_s``; None: no limit). A fresh
    prompt leaves ``follow_up_room`` of its room free when follow-ups extend it (``reuse_conversation``)."""

    def __init__(
        self,
        tokens: ModelTokens,
        *,
        prompt_speed: PromptSpeed | None = None,
        max_wait_s: float | None = None,
        follow_up_room: float = 0.25,
        reuse_conversation: bool = True,
    ) -> None:
        self.tokens = tokens
        self.prompt_speed = prompt_speed
        self.max_wait_s = max_wait_s
        self.follow_up_room = follow_up_room
        self.reuse_conversation = reuse_conversation

    @property
    def useful(self) -> int:
        """A useful amount of evidence: less room than this is not worth a prompt (small windows: an eighth)."""
        return min(MIN_EVIDENCE, max(32, self.tokens.context_window // 8))

    def room(self, prompt_tokens: int, reserve: int) -> int:
        """Tokens left for evidence beside ``prompt_tokens`` of prompt and ``reserve`` for the answer."""
        return self.tokens.context_window - reserve - prompt_tokens - _SAFETY

    def limit(self, room: int, reads: int, notes: list[str], *caps: int | None, leave_follow_up_room: bool) -> int:
        """The formula: ``room``, at most each of ``caps``, then at most what the model reads within the wait cap
        after ``reads`` other new prompt tokens (a note says so). Otherwise, with ``leave_follow_up_room``, a share
        is kept free so follow-ups can extend this prompt (else the next turn must start afresh)."""
        budget = min([room, *(cap for cap in caps if cap is not None)])
        cap = self.wait_cap(reads)
        if cap is not None and cap < budget:
            speed = self.prompt_speed.tokens_per_s() if self.prompt_speed is not None else None
            notes.append(wait_limited(cap, room, self.max_wait_s or 0.0, speed or 0.0))
            return cap
        if leave_follow_up_room and self.reuse_conversation:
            return max(1, int(budget * (1 - self.follow_up_room)))
        return budget

    def wait_cap(self, reads: int) -> int | None:
        """The most evidence the model reads, after ``reads`` other prompt tokens, within ``max_wait_s`` at the
        measured prompt speed (None: no limit, or the speed is not known yet); never below a useful minimum."""
        if self.max_wait_s is None or self.prompt_speed is None:
            return None
        speed = self.prompt_speed.tokens_per_s()
        if speed is None:
            return None
        return max(MIN_EVIDENCE, int(self.max_wait_s * speed) - reads)

    def follow_up_share(self, reserve: int) -> int:
        """The new evidence a fresh prompt keeps room for."""
        return int(self.follow_up_room * (self.tokens.context_window - reserve))

    def fresh(
        self,
        history: list[ChatMessage],
        overhead_of: Callable[[list[ChatMessage]], int],
        max_context_tokens: int | None,
        reserve: int,
    ) -> tuple[int, list[ChatMessage], list[str]]:
        """A fresh prompt's budget, the history that fits and notes. ``overhead_of(history)``: the prompt's tokens
        without evidence. The oldest turns are dropped while the room is less than a useful amount; a question
        that does not fit alone raises :class:`ContextOverflowError`."""
        window, notes = self.tokens.context_window, list[str]()
        kept = list(history)
        while True:
            overhead = overhead_of(kept)
            room = self.room(overhead, reserve)
            if room >= self.useful or not kept:
                break
            kept = kept[2:] if len(kept) >= 2 else []
        if len(kept) < len(history):
            notes.append(history_trimmed(len(history) - len(kept)))
        if room < 1:
            raise ContextOverflowError(
                f"the question and instructions take {overhead} tokens and {reserve} are reserved for the answer: "
                f"more than the context window of {window} tokens. Ask a shorter question, lower max_tokens "
                "(RAG_LLM_MAX_TOKENS / --max-tokens) or raise n_ctx (RAG_LLM_N_CTX).",
                prompt_tokens=overhead,
                max_tokens=reserve,
                context_window=window,
            )
        budget = self.limit(room, overhead, notes, max_context_tokens, leave_follow_up_room=max_context_tokens is None)
        return budget, kept, notes

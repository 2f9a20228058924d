"""The answer stream stage: the model's pieces with their citation markers checked as they stream (an invented
marker never reaches the reader), then the sources the answer rests on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables.utils import AddableDict

from rag.answer.citations import CitationStreamFilter, attribute_answer, check_citations, select_sources
from rag.answer.prepared import PreparedQuestion
from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH, is_chinese

__all__ = ["AnswerStream"]


class AnswerStream:
    """One answer as it streams: :meth:`feed` each piece, :meth:`flush` at the end, then :meth:`final` for the
    sources (the top ``top_uncited`` passages listed when the answer cites none). ``on_answered(prepared, text)``
    is told a real answer's text (the conversation keeps its layout for the next turn)."""

    def __init__(
        self,
        prepared: PreparedQuestion,
        *,
        top_uncited: int,
        on_answered: Callable[[PreparedQuestion, str], None] | None = None,
    ) -> None:
        self.prepared = prepared
        self.top_uncited = top_uncited
        self.on_answered = on_answered
        self.passages = prepared.passages
        self.valid = {p["n"] for p in self.passages}
        self.text = ""
        self.citations = CitationStreamFilter(self.valid)
        self.insufficient: str | None = None
        """The refusal, given without asking the model for an answer: no evidence at all, or the answerability check
        refused (:meth:`refuse`)."""
        self.answerability: float | None = None
        """The answerability check's score, where it ran."""
        if not self.passages:
            self.refuse()

    def refuse(self) -> None:
        """Answer with the refusal sentence, without asking the model: no evidence, or none that holds the answer."""
        self.insufficient = INSUFFICIENT_ZH if is_chinese(self.prepared.question) else INSUFFICIENT_EN
        self.text = self.insufficient

    def feed(self, piece: str) -> str:
        shown = self.citations.feed(piece)
        self.text += shown
        return shown

    def flush(self) -> str:
        rest = self.citations.flush()
        self.text += rest
        return rest

    def final(self) -> AddableDict:
        cited = check_citations(self.text, self.valid).cited
        prepared = self.prepared
        # an answer that names no passage is matched to the passages by its own words (a refusal never is); those
        # sources say "attributed" so no surface presents them as the model's own citations
        refused = self.insufficient is not None or INSUFFICIENT_ZH[:4] in self.text or INSUFFICIENT_EN[:19] in self.text
        attributed = not cited and not refused and bool(self.text.strip())
        if attributed:
            cited = attribute_answer(self.text, prepared.question, self.passages)
        sources: list[dict[str, Any]] = select_sources(self.passages, cited, top_uncited=self.top_uncited)
        if attributed and cited:
            sources = [{**source, "attributed": True} for source in sources]
        if self.on_answered is not None and self.insufficient is None and prepared.messages and self.text.strip():
            self.on_answered(prepared, self.text)
        final = AddableDict(
            sources=sources,
            context_tokens=prepared.packed.tokens,
            standalone_question=prepared.standalone_question,
        )
        if self.answerability is not None:
            final["answerability"] = self.answerability
        return final

"""The query planning stage: what a question is retrieved with. A fresh question: itself. A follow-up: itself and
itself after the previous question (``history``, no model call: the cache stays and nothing is waited for), or a
standalone question the model writes (``rewrite``, one more generation before the answer). Measured in
docs/benchmarks.md, "Follow-ups: what to retrieve with"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from langchain_core.messages import BaseMessage, HumanMessage

from rag.answer.conversation import ConversationLayout, rewrite_follow_up_message
from rag.answer.layout import PromptLayout, langchain_messages
from rag.answer.qa_prompt import clean_rewrite, render_rewrite_prompt
from rag.errors import ConfigError, ContextOverflowError
from rag.llm.prompt import ChatMessage

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

__all__ = ["FollowUpQuery", "QueryPlanner", "document_key", "fuse_rankings", "join_rankings", "text_of"]

FollowUpQuery: TypeAlias = Literal["history", "rewrite"]
"""How a follow-up is retrieved (:class:`QueryPlanner`)."""

#: Turns of history the rewrite prompt sees.
_REWRITE_TURNS = 6
#: Reciprocal-rank fusion's damping constant (Cormack et al. 2009): rank 1 of one query weighs little more than
#: rank 2 of the other, so a passage both queries find comes first.
_RRF_K = 60


class QueryPlanner:
    """The queries of one question. ``model`` writes rewrites (``rewrite_llm``, any Runnable str -> str, overrides
    it); ``layout`` renders the rewrite request at the end of the conversation's own prompt."""

    def __init__(
        self,
        mode: FollowUpQuery,
        layout: PromptLayout,
        *,
        model: Runnable[Any, Any] | None = None,
        rewrite_llm: Runnable[Any, str] | None = None,
        rewrite_max_tokens: int = 48,
    ) -> None:
        if mode not in ("history", "rewrite"):
            raise ConfigError(f"follow_up_query={mode!r}: choose 'history' or 'rewrite'")
        self.mode = mode
        self.layout = layout
        self.model = model
        self.rewrite_llm = rewrite_llm
        self.rewrite_max_tokens = rewrite_max_tokens

    def queries(self, question: str, history: Sequence[ChatMessage]) -> list[str]:
        """The queries before any rewrite: ``history`` mode's pair for a follow-up, else the question alone."""
        return history_queries(question, history) if self.mode == "history" else [question]

    def rewrite(self, question: str, history: Sequence[ChatMessage], layout: ConversationLayout | None = None) -> str:
        """``question`` made standalone with the history (the model, few tokens); the question itself when there is
        no history, no model, or the rewrite is unusable."""
        call = self._rewrite_call(question, history, layout)
        if call is None:
            return question
        try:
            text = call[0].invoke(call[1])
        except ContextOverflowError:
            return question
        return clean_rewrite(text_of(text), question)

    async def arewrite(
        self, question: str, history: Sequence[ChatMessage], layout: ConversationLayout | None = None
    ) -> str:
        """:meth:`rewrite` without blocking the event loop."""
        call = self._rewrite_call(question, history, layout)
        if call is None:
            return question
        try:
            text = await call[0].ainvoke(call[1])
        except ContextOverflowError:
            return question
        return clean_rewrite(text_of(text), question)

    def _rewrite_call(
        self, question: str, history: Sequence[ChatMessage], layout: ConversationLayout | None
    ) -> tuple[Runnable[Any, Any], Any] | None:
        """The model and input that make ``question`` standalone; None when nothing needs rewriting. With the
        conversation's layout, it is asked at the end of the conversation's own prompt (the cache stays)."""
        if not history or (self.model is None and self.rewrite_llm is None):
            return None
        turns = list(history)[-_REWRITE_TURNS:]
        prompt_format = self.layout.tokens.prompt_format
        if self.rewrite_llm is not None:
            return self.rewrite_llm, render_rewrite_prompt(question, turns, prompt_format=prompt_format)
        assert self.model is not None
        model: Runnable[Any, Any] = self.model.bind(max_tokens=self.rewrite_max_tokens, temperature=0.0)
        if layout is not None:
            messages = [*layout.messages, ChatMessage("user", rewrite_follow_up_message(question))]
            return model, langchain_messages(messages) if self.layout.chat else self.layout.render(messages)[0]
        # Without a layout (the first follow-up after a fresh start) the rewrite replaces llama.cpp's cached prefix;
        # all the answer prompt could have reused then is its instructions (~180 tokens).
        if self.layout.chat:  # one user message: the chat model applies its own template
            return model, [HumanMessage(render_rewrite_prompt(question, turns, prompt_format="native"))]
        return model, render_rewrite_prompt(question, turns, prompt_format=prompt_format)


def history_queries(question: str, history: Sequence[ChatMessage]) -> list[str]:
    """What a follow-up is retrieved with, without a model: itself, and itself after the previous question (which
    carries the topic a pronoun or an elliptical "and X?" leaves out)."""
    previous = next((m.content.strip() for m in reversed(history) if m.role == "user" and m.content.strip()), "")
    if not previous or previous == question:
        return [question]
    return [question, f"{previous}\n{question}"]


def join_rankings(rankings: Sequence[Sequence[Any]]) -> list[Any]:
    """One ranking from :func:`history_queries`' (the follow-up's own first): each query's best hit leads, in that
    order (a prompt with room for one passage still holds the follow-up's own best), then the rest by
    reciprocal-rank fusion. Measured (bench/follow_ups.py): the topic a pronoun leaves out and a switch of topic
    are both inside the context, where fusion alone missed a tenth of the pronouns."""
    if len(rankings) == 1:
        return list(rankings[0])
    heads = [ranking[0] for ranking in rankings if ranking]
    ordered: dict[str, Any] = {}
    for document in [*heads, *fuse_rankings(rankings)]:
        ordered.setdefault(document_key(document), document)
    return list(ordered.values())


def fuse_rankings(rankings: Sequence[Sequence[Any]], weights: Sequence[float] | None = None) -> list[Any]:
    """Weighted reciprocal-rank fusion of ranked documents (one list per query, ``weights`` one per list, default
    1), best first; a document is known by its id (or ``chunk_id``) and kept once, as its best-ranked copy."""
    scores: dict[str, float] = {}
    first: dict[str, Any] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, document in enumerate(ranking, start=1):
            key = document_key(document)
            scores[key] = scores.get(key, 0.0) + weight / (_RRF_K + rank)
            first.setdefault(key, document)
    return [first[key] for key in sorted(scores, key=lambda key: -scores[key])]


def document_key(document: Any) -> str:
    return str(document.id or document.metadata.get("chunk_id") or document.page_content)


def text_of(output: Any) -> str:
    """The text of what a model returned: a string (an LLM) or a message / message chunk (a chat model)."""
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return output.text
    return str(output)

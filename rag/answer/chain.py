"""The question-answering chain, handed its collaborators: ``rag.build_chain(settings) -> Runnable`` (LCEL) builds
one (:mod:`rag.app.root`); this module builds nothing.

>>> chain = build_chain(Settings.load(data_dir="data"))
>>> chain.invoke("年假有几天？")["answer"]
>>> history = [("user", "年假有几天？"), ("assistant", "五天[1]")]
>>> for chunk in chain.stream({"question": "那病假呢？", "chat_history": history}):
...     print(chunk)            # {"answer": "..."} pieces as they are generated, then {"sources": [...], ...}
>>> await chain.ainvoke({"question": "年假有几天？", "options": {"k": 3, "temperature": 0}})

Input and output are typed (:mod:`rag.answer.schemas`), so ``chain.as_tool()`` gives an agent a tool. The model may
be a :class:`rag.llm.adapter.MixtralInstructLLM` (prompt strings), a :class:`rag.llm.chat_model.ChatMixtralInstruct`
or any LangChain chat model (messages, e.g. ``ChatOpenAI`` pointed at a llama.cpp server).

The chain composes the stages, each a small component with one job: the input (:mod:`rag.answer.inputs`) ->
query planning (:mod:`rag.answer.planning`: a follow-up's queries, or its rewrite) -> the evidence budget
(:mod:`rag.answer.budget`) -> retrieval, rerank and packing (:mod:`rag.answer.evidence`) -> the prompt layout, fresh
or extending the previous turn's (:mod:`rag.answer.layout`, :mod:`rag.answer.conversation`) -> the answer stream
with its citations checked (:mod:`rag.answer.streaming`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda, RunnableSequence
from langchain_core.runnables.utils import AddableDict

from rag.answer.answerability import AnswerabilityCheck, Calibration, Judgement
from rag.answer.budget import EvidenceBudget
from rag.answer.context import PackedContext, pack_context, render_context
from rag.answer.conversation import ConversationLayout, LayoutMemory, follow_up_message, renumbered
from rag.answer.evidence import EvidenceFinder
from rag.answer.inputs import read_question
from rag.answer.layout import PromptLayout, langchain_messages
from rag.answer.notes import conversation_restarted
from rag.answer.planning import FollowUpQuery, QueryPlanner, document_key, text_of
from rag.answer.prepared import PreparedQuestion
from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH, is_chinese, qa_messages
from rag.answer.schemas import RagAnswer, RagQuestion
from rag.answer.streaming import AnswerStream
from rag.chunks import ContextChunk
from rag.errors import ConfigError, ContextOverflowError, EmptyStoreError
from rag.llm.core import MixtralModelCore
from rag.llm.prompt import ChatMessage
from rag.llm.refusal import RefusalGate

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from rag.chunks import ChunkReader
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.counting import ModelTokens
    from rag.llm.speed import PromptSpeed
    from rag.retrieval.rerankers.base import Reranker

    AnswerModel: TypeAlias = MixtralInstructLLM | BaseChatModel

__all__ = ["FollowUpQuery", "PreparedQuestion", "RagChain"]

logger = logging.getLogger("rag.answer.chain")

#: Tokens of a follow-up's new message besides its evidence: the question and the block's heading.
_FOLLOW_UP_HEADING = 16


class RagChain:
    """The stages of answering one question, composed; :attr:`runnable` is the LCEL chain.

    ``retriever`` finds hits; ``reader`` is where passages and their neighbours are read (the local copy beside the
    BM25 index; None: the retrieved documents are packed as they are); ``tokens`` counts and limits of the model
    that reads the prompt; ``document_count`` tells an empty collection (None: not checked). Without an ``llm`` only
    :meth:`prepare` works (the assembled context, counted with ``tokens``): what ``rag ask --no-llm`` prints. The
    other arguments configure the stages: :attr:`planner`, :attr:`budget`, :attr:`evidence`, :attr:`layout`.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        tokens: ModelTokens,
        *,
        llm: AnswerModel | None = None,
        reader: ChunkReader | None = None,
        document_count: Callable[[], int] | None = None,
        k: int = 5,
        max_context_tokens: int | None = None,
        rewrite_max_tokens: int = 48,
        top_uncited: int = 3,
        empty_message: str = "nothing has been ingested yet: run `ingest PATH` (or `rag ingest PATH`) first",
        rewrite_llm: Runnable[Any, str] | None = None,
        reuse_conversation: bool = True,
        follow_up_room: float = 0.25,
        prompt_speed: PromptSpeed | None = None,
        max_wait_s: float | None = None,
        relevance_floor: float = 0.0,
        follow_up_query: FollowUpQuery = "history",
        reranker: Reranker | None = None,
        rerank_candidates: int = 20,
        rerank_top_n: int | None = None,
        refusal_threshold: float | None = None,
        answerability: Calibration | None = None,
    ) -> None:
        self.tokens = tokens
        self.llm = llm
        self.document_count = document_count
        self.k = k
        """Top hits expanded first, unless a question says otherwise."""
        self.max_context_tokens = max_context_tokens
        """Evidence budget, unless a question says otherwise (None: the window less the prompt and the answer)."""
        self.top_uncited = top_uncited
        self.empty_message = empty_message
        self.reuse_conversation = reuse_conversation
        """Follow-ups extend the previous turn's prompt (llama.cpp reuses its cache) instead of a fresh one."""
        self.layout = PromptLayout(tokens, chat=isinstance(llm, BaseChatModel))
        self.planner = QueryPlanner(
            follow_up_query, self.layout, model=llm, rewrite_llm=rewrite_llm, rewrite_max_tokens=rewrite_max_tokens
        )
        self.budget = EvidenceBudget(
            tokens,
            prompt_speed=prompt_speed,
            max_wait_s=max_wait_s,
            follow_up_room=follow_up_room,
            reuse_conversation=reuse_conversation,
        )
        self.evidence = EvidenceFinder(
            retriever,
            tokens,
            reader=reader,
            reranker=reranker,
            rerank_candidates=rerank_candidates,
            rerank_top_n=rerank_top_n,
            relevance_floor=relevance_floor,
        )
        self.layouts = LayoutMemory()
        """Each conversation's last prompt, which its next question extends."""
        self.refusal_threshold = refusal_threshold
        """Refuse when the model gives the refusal's first token at least this probability (:mod:`rag.llm.refusal`;
        None: the model's own choice). Only this project's models read it; the probability is reported either way."""
        self.answerability = None if answerability is None else AnswerabilityCheck(self.layout, answerability)
        """Asks the model whether the evidence holds the answer before it answers, and refuses at its threshold
        (:mod:`rag.answer.answerability`; None: not asked)."""

    @property
    def retriever(self) -> BaseRetriever:
        return self.evidence.retriever

    def retrieve(
        self, queries: Sequence[str], *, budget: int, k: int, sources: list[str] | None = None
    ) -> list[Document]:
        """The hits the evidence is packed from, best first (:meth:`EvidenceFinder.retrieve`)."""
        return self.evidence.retrieve(queries, budget=budget, k=k, sources=sources)

    def budget_for(
        self,
        question: str,
        history: list[ChatMessage],
        max_context_tokens: int | None = None,
        *,
        max_tokens: int | None = None,
        system: str = "",
    ) -> tuple[int, list[ChatMessage], list[str]]:
        """A fresh prompt's tokens for evidence (at most ``max_context_tokens``), the history that fits, notes
        (:meth:`EvidenceBudget.fresh`). ``max_tokens``: this answer's reserve (default: the model's)."""

        def overhead_of(kept: list[ChatMessage]) -> int:
            return self.layout.render(qa_messages(question, "", kept, system=system))[1]

        reserve = self.tokens.max_tokens if max_tokens is None else max_tokens
        return self.budget.fresh(history, overhead_of, max_context_tokens, reserve)

    # -- preparing: everything before generation ---------------------------------------------------------------
    def prepare(
        self,
        inputs: Any,
        *,
        k: int | None = None,
        max_context_tokens: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> PreparedQuestion:
        """Plan, retrieve, pack and lay out: the prompt, within the window, and its passages.

        ``k`` and ``max_context_tokens`` are this question's (default: the input's ``options``, then the chain's).
        ``timings``, when given, receives ``rewrite_ms`` (making a follow-up standalone, an LLM call) and
        ``retrieval_ms`` (retrieval, expansion and packing): the figures a UI shows.
        """
        start = self._start(inputs, k, max_context_tokens)
        started = time.perf_counter()
        if self.planner.mode == "rewrite":
            start.queries = [self.planner.rewrite(start.question, start.history, start.layout)]
        rewritten = time.perf_counter()
        prepared = self._finish(start)
        if timings is not None:
            timings["rewrite_ms"] = (rewritten - started) * 1000
            timings["retrieval_ms"] = (time.perf_counter() - rewritten) * 1000
        return prepared

    async def aprepare(
        self,
        inputs: Any,
        *,
        k: int | None = None,
        max_context_tokens: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> PreparedQuestion:
        """:meth:`prepare` without blocking the event loop: the rewrite through the model's async API, counting,
        retrieval and packing (SQLite, Chroma, tokenizers) in a worker thread."""
        start = await asyncio.to_thread(self._start, inputs, k, max_context_tokens)
        started = time.perf_counter()
        if self.planner.mode == "rewrite":
            start.queries = [await self.planner.arewrite(start.question, start.history, start.layout)]
        rewritten = time.perf_counter()
        prepared = await asyncio.to_thread(self._finish, start)
        if timings is not None:
            timings["rewrite_ms"] = (rewritten - started) * 1000
            timings["retrieval_ms"] = (time.perf_counter() - rewritten) * 1000
        return prepared

    def _start(self, inputs: Any, k: int | None, max_context_tokens: int | None) -> _Start:
        asked = read_question(inputs)
        options = asked.options
        if self.document_count is not None and self.document_count() == 0:
            raise EmptyStoreError(self.empty_message)
        if max_context_tokens is None:
            max_context_tokens = options.max_context_tokens
        limit = self.max_context_tokens if max_context_tokens is None else max_context_tokens
        budget, kept, notes = self.budget_for(
            asked.question, asked.history, limit, max_tokens=options.max_tokens, system=asked.system
        )
        llm_kwargs: dict[str, Any] = {
            key: value
            for key, value in (("temperature", options.temperature), ("max_tokens", options.max_tokens),
                               ("seed", options.seed))
            if value is not None
        }  # fmt: skip
        if isinstance(self.llm, MixtralModelCore):  # another LangChain model would reject the argument
            refusal = INSUFFICIENT_ZH if is_chinese(asked.question) else INSUFFICIENT_EN
            llm_kwargs["refusal"] = RefusalGate(refusal, self.refusal_threshold)
        reuse = self.reuse_conversation and asked.history
        return _Start(
            question=asked.question,
            history=kept,
            budget=budget,
            notes=notes,
            k=k if k is not None else options.k if options.k is not None else self.k,
            llm_kwargs=llm_kwargs,
            system=asked.system,
            sources=options.sources,
            conversation=asked.history,
            layout=self.layouts.get(asked.system, asked.history) if reuse else None,
            max_context_tokens=limit,
            queries=self.planner.queries(asked.question, asked.history),
        )

    def _finish(self, start: _Start) -> PreparedQuestion:
        if start.layout is not None:
            prepared = self._follow_up(start, start.layout)
            if prepared is not None:
                return prepared
            start.notes.append(conversation_restarted())
        return self._fresh(start)

    def _fresh(self, start: _Start) -> PreparedQuestion:
        reserve = start.llm_kwargs.get("max_tokens", self.tokens.max_tokens)
        documents = self.evidence.retrieve(start.queries, budget=start.budget, k=start.k, sources=start.sources)
        packed = self.evidence.pack(documents, start.budget, start.k)

        def messages_for(evidence: PackedContext) -> list[ChatMessage]:
            return qa_messages(start.question, evidence.text, start.history, system=start.system)

        fitted = self.layout.fit(packed, messages_for, reserve)
        if fitted is None:  # budget_for left room for the prompt without evidence: this is a counting fault
            raise ContextOverflowError(
                f"the prompt did not fit the context window of {self.tokens.context_window} tokens after packing "
                "its evidence three times: lower max_context_tokens or max_tokens, or raise n_ctx (RAG_LLM_N_CTX)",
                max_tokens=reserve,
                context_window=self.tokens.context_window,
            )
        budget = start.budget if fitted.packed is packed else fitted.packed.budget
        return start.prepared(fitted.packed, fitted.prompt, fitted.tokens, budget, fitted.messages)

    def _follow_up(self, start: _Start, layout: ConversationLayout) -> PreparedQuestion | None:
        """The previous turn's prompt, extended by the passages new for this question and the question. Where this
        question's own best passages do not fit after it, the least relevant passages of the first question's
        evidence are dropped from its end, as few as will do (the prompt up to the cut stays cached; what follows
        it is read again). None when the window cannot hold them even then."""
        reserve = start.llm_kwargs.get("max_tokens", self.tokens.max_tokens)
        limit = start.max_context_tokens  # the question's, else the chain's (resolved by _start)
        useful = self.budget.useful
        needed = useful if limit is None else min(useful, limit)  # a useful amount of evidence (or all that is asked)
        widest = self._without_tail(layout, 0) or layout
        most = self._follow_up_room(start, widest, reserve)
        if most < needed:
            return None  # the conversation so far leaves too little room
        budget = most if limit is None else min(most, limit)
        documents = self.evidence.retrieve(start.queries, budget=budget, k=start.k, sources=start.sources)
        # its own best passages: the best hit of each query it is retrieved with (join_rankings puts them first),
        # at least two
        best = documents[: min(start.k, max(2, len(start.queries)))]
        keys = [document_key(d) for d in best]
        # A follow-up pays for what is new to it: its own best passages the prompt does not hold yet, or a share of
        # what a fresh question reads now if that is more. Without this cap a prompt the wait had cut short (room
        # left in the window) took a whole wait of new evidence again: on CMRC's pronoun follow-ups the second turn
        # waited as long as the first (session 18).
        most_new = self._new_evidence_cap(layout, best, most, reserve)
        extended = self._extend(start, layout, documents, keys, reserve, needed, most_new=most_new)
        if extended is not None or widest is layout:
            return extended
        # Dropping earlier evidence makes this follow-up read the turns after the cut again: it reads no more new
        # evidence than a fresh prompt keeps free for follow-ups, or than its own best passages need.
        own = self._packed_tokens(best, most)
        most_new = max(self.budget.follow_up_share(reserve), own + _FOLLOW_UP_HEADING * len(best))
        # the most of the first evidence that leaves room for them (binary search: keeping fewer only frees room)
        low, high = 0, (len(layout.passages) if layout.first_block is None else layout.first_block) - 1
        while low <= high:
            keep = (low + high) // 2
            trimmed = self._without_tail(layout, keep)
            attempt = (
                None if trimmed is None
                else self._extend(start, trimmed, documents, keys, reserve, needed, most_new=most_new,
                                  rereads=max(0, self.layout.render(trimmed.messages)[1] - trimmed.tokens))
            )  # fmt: skip
            if attempt is None:
                high = keep - 1
            else:
                extended, low = attempt, keep + 1
        return extended

    def _new_evidence_cap(self, layout: ConversationLayout, best: list[Any], most: int, reserve: int) -> int:
        """The most new evidence a follow-up that extends ``layout`` reads: its ``best`` passages that ``layout``
        does not hold, or the follow-up share of a fresh prompt's evidence (under the wait cap where one binds)."""
        given = frozenset(chunk_id for passage in layout.passages for chunk_id in passage.chunk_ids)
        new = [d for d in best if document_key(d) not in given]
        own = self._packed_tokens(new, most) if new else 0
        waited = self.budget.wait_cap(0)
        share = self.budget.follow_up_share(reserve)
        if waited is not None:
            share = min(share, int(self.budget.follow_up_room * waited))
        return max(share, own + _FOLLOW_UP_HEADING * len(new))

    def _packed_tokens(self, documents: list[Any], most: int) -> int:
        """Evidence tokens ``documents`` take once packed (at most ``most``)."""
        return pack_context([ContextChunk.from_document(d) for d in documents], most, self.tokens.count).tokens

    def _without_tail(self, layout: ConversationLayout, keep: int) -> ConversationLayout | None:
        """:meth:`ConversationLayout.without_tail`, its ``tokens`` what the model still holds: the first message (and
        the few tokens of the template around it: a figure to show)."""
        trimmed = layout.without_tail(keep, self.tokens.count)
        if trimmed is None:
            return None
        return replace(trimmed, tokens=self.layout.render([trimmed.messages[0], ChatMessage("user", ".")])[1])

    def _follow_up_room(self, start: _Start, layout: ConversationLayout, reserve: int) -> int:
        """Tokens for new evidence after ``layout`` and this question."""
        base = [*layout.messages, ChatMessage("user", follow_up_message(start.question, ""))]
        return self.budget.room(self.layout.render(base)[1] + _FOLLOW_UP_HEADING, reserve)

    def _extend(
        self,
        start: _Start,
        layout: ConversationLayout,
        documents: list[Any],
        best: list[str],
        reserve: int,
        needed: int,
        *,
        most_new: int | None = None,
        rereads: int = 0,
    ) -> PreparedQuestion | None:
        """``layout`` extended by the passages of ``documents`` it does not hold yet (at most ``most_new`` tokens of
        them) and the question; None when the room after it is less than ``needed`` or cannot hold the ``best``
        documents. ``rereads``: tokens of ``layout`` the model must read again (the turns after a cut)."""
        room = self._follow_up_room(start, layout, reserve)
        if room < needed:
            return None
        notes = list(start.notes)
        # what the model reads: the new message (its question and headings: 32), and the turns after a cut
        budget = self.budget.limit(
            room, 32 + rereads, notes, start.max_context_tokens, most_new, leave_follow_up_room=False
        )
        given = frozenset(chunk_id for passage in layout.passages for chunk_id in passage.chunk_ids)
        packed = self.evidence.pack(documents, budget, start.k, given)

        def messages_for(evidence: PackedContext) -> list[ChatMessage]:
            fresh = renumbered(evidence.passages, layout.next_number)
            context = render_context(fresh) if fresh else ""
            return [*layout.messages, ChatMessage("user", follow_up_message(start.question, context))]

        fitted = self.layout.fit(packed, messages_for, reserve)
        if fitted is None:
            return None
        fresh = renumbered(fitted.packed.passages, layout.next_number)
        covered = given | {chunk_id for passage in fresh for chunk_id in passage.chunk_ids}
        if not all(chunk_id in covered for chunk_id in best):
            return None  # this question's own best passages must be in its prompt
        evidence = PackedContext(
            text=render_context(fresh) if fresh else "",
            passages=[*layout.passages, *fresh],
            tokens=layout.evidence_tokens + fitted.packed.tokens,
            budget=budget,
            truncated=fitted.packed.truncated,
            notes=fitted.packed.notes,
        )
        return start.prepared(
            evidence, fitted.prompt, fitted.tokens, budget, fitted.messages, follows_up=True,
            reused_tokens=layout.tokens, notes=notes, numbered=max([layout.next_number - 1, *(p.n for p in fresh)]),
            first_block=len(layout.passages) if layout.first_block is None else layout.first_block,
        )  # fmt: skip

    # -- answering ---------------------------------------------------------------------------------------------
    def generate(self, prepared: PreparedQuestion, **llm_kwargs: Any) -> Iterator[AddableDict]:
        """The answer in pieces (``{"answer": piece}``), citations checked as they stream; then the sources.

        ``llm_kwargs`` (``temperature``, ``max_tokens``, ``seed``, ...) go to the model for this answer only: a UI
        session's own temperature without changing the shared model.
        """
        answer = self._answer_stream(prepared)
        if answer.insufficient is None and self.answerability is not None and self.llm is not None:
            model, model_input = self._answer_call(prepared)
            self._apply(answer, self.answerability.judge(model, model_input, prepared))
        if answer.insufficient is not None:
            yield AddableDict(answer=answer.insufficient)
        else:
            model, model_input = self._answer_call(prepared)
            for piece in model.stream(model_input, **{**prepared.llm_kwargs, **llm_kwargs}):
                shown = answer.feed(text_of(piece))
                if shown:
                    yield AddableDict(answer=shown)
            rest = answer.flush()
            if rest:
                yield AddableDict(answer=rest)
        yield answer.final()

    async def agenerate(self, prepared: PreparedQuestion, **llm_kwargs: Any) -> AsyncGenerator[AddableDict, None]:
        """:meth:`generate` through the model's async API; closing the stream stops the generation."""
        answer = self._answer_stream(prepared)
        if answer.insufficient is None and self.answerability is not None and self.llm is not None:
            model, model_input = self._answer_call(prepared)
            judged = await asyncio.to_thread(self.answerability.judge, model, model_input, prepared)
            self._apply(answer, judged)
        if answer.insufficient is not None:
            yield AddableDict(answer=answer.insufficient)
        else:
            model, model_input = self._answer_call(prepared)
            # closed explicitly when this stream is: the model's worker thread stops at its next token
            options = {**prepared.llm_kwargs, **llm_kwargs}  # this call's settings over the question's
            generation = cast("AsyncGenerator[Any, None]", model.astream(model_input, **options))
            async with contextlib.aclosing(generation) as stream:
                async for piece in stream:
                    shown = answer.feed(text_of(piece))
                    if shown:
                        yield AddableDict(answer=shown)
            rest = answer.flush()
            if rest:
                yield AddableDict(answer=rest)
        yield answer.final()

    @staticmethod
    def _apply(answer: AnswerStream, judged: Judgement) -> None:
        answer.answerability = judged.score
        if judged.refuse:
            answer.refuse()

    def _answer_stream(self, prepared: PreparedQuestion) -> AnswerStream:
        return AnswerStream(prepared, top_uncited=self.top_uncited, on_answered=self._remember)

    def _remember(self, prepared: PreparedQuestion, text: str) -> None:
        """Keep this turn's prompt and answer: the conversation's next question extends it."""
        turns = [*prepared.conversation, ChatMessage("user", prepared.question), ChatMessage("assistant", text)]
        layout = ConversationLayout(
            messages=[*prepared.messages, ChatMessage("assistant", text)],
            passages=list(prepared.packed.passages),
            evidence_tokens=prepared.packed.tokens,
            tokens=prepared.prompt_tokens + self.tokens.count(text),
            first_block=prepared.first_block,
            numbered=prepared.numbered,
        )
        self.layouts.put(prepared.system, turns, layout)

    def _answer_call(self, prepared: PreparedQuestion) -> tuple[Runnable[Any, Any], Any]:
        if self.llm is None:
            raise ConfigError("no language model: build the chain with an llm (or use prepare() for context only)")
        if self.layout.chat:
            return self.llm, langchain_messages(prepared.messages)
        return self.llm, prepared.prompt

    @property
    def runnable(self) -> Runnable[Any, dict[str, Any]]:
        """``question | {"question", "chat_history", "options"}`` -> ``{"answer", "sources", "context_tokens",
        ...}``, sync and async (:mod:`rag.answer.schemas` types it)."""

        def generate(inputs: Iterator[PreparedQuestion]) -> Iterator[AddableDict]:
            for prepared in inputs:
                yield from self.generate(prepared)

        async def agenerate(inputs: AsyncIterator[PreparedQuestion]) -> AsyncIterator[AddableDict]:
            async for prepared in inputs:
                async with contextlib.aclosing(self.agenerate(prepared)) as pieces:
                    async for piece in pieces:
                        yield piece

        async def aprepare(inputs: Any) -> PreparedQuestion:
            return await self.aprepare(inputs)

        prepare: Runnable[Any, PreparedQuestion] = RunnableLambda(self.prepare, afunc=aprepare, name="rag_prepare")
        answer = RunnableGenerator(generate, agenerate, name="rag_answer")
        chain: Runnable[Any, dict[str, Any]] = RunnableSequence(prepare, answer, name="rag_chain")  # a tool's name
        return chain.with_types(input_type=RagQuestion, output_type=RagAnswer)  # type: ignore[arg-type]


@dataclass
class _Start:
    """What is decided before the rewrite: the question, the history that fits, the budget, this question's
    settings."""

    question: str
    history: list[ChatMessage]
    budget: int
    notes: list[str]
    k: int
    llm_kwargs: dict[str, Any]
    system: str = ""
    sources: list[str] | None = None
    conversation: list[ChatMessage] = field(default_factory=list)
    """The whole history the caller sent (``history`` may have dropped old turns to fit)."""
    layout: ConversationLayout | None = None
    """The previous turn's prompt, when this question follows up on it."""
    max_context_tokens: int | None = None
    queries: list[str] = field(default_factory=list)
    """What is retrieved with: the question (and, for a follow-up, :meth:`RagChain.history_queries` or the
    rewrite)."""

    @property
    def standalone(self) -> str:
        """The question as retrieval read it: the rewrite, or the question itself."""
        return self.queries[0] if len(self.queries) == 1 else self.question

    def prepared(
        self,
        packed: PackedContext,
        prompt: str,
        prompt_tokens: int,
        budget: int,
        messages: list[ChatMessage],
        *,
        follows_up: bool = False,
        reused_tokens: int = 0,
        notes: list[str] | None = None,
        first_block: int | None = None,
        numbered: int = 0,
    ) -> PreparedQuestion:
        """This question, prepared with ``packed`` evidence in ``prompt`` (``follows_up``, ``reused_tokens``: the
        prompt extends the previous turn's, whose tokens the model has read)."""
        return PreparedQuestion(
            self.question,
            self.standalone,
            self.history,
            packed,
            prompt,
            prompt_tokens,
            budget,
            self.notes if notes is None else notes,
            messages=messages,
            llm_kwargs=self.llm_kwargs,
            system=self.system,
            conversation=self.conversation,
            follows_up=follows_up,
            reused_tokens=reused_tokens,
            first_block=first_block,
            numbered=numbered,
        )

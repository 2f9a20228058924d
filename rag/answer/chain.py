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

Steps: (follow-up) the retrieval queries: the follow-up and the follow-up after the previous question, each one's
best hit first and then their rankings fused (``follow_up_query="history"``, the default), or a standalone question
the LLM writes (``"rewrite"``) -> hybrid retrieval, deep enough to fill the budget -> neighbours, merging, packing
to the exact token budget (:mod:`rag.answer.context`) -> the prompt, stable prefix first
(:mod:`rag.answer.qa_prompt`) -> the LLM, streamed -> citations checked (:mod:`rag.answer.citations`) -> answer and
sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda, RunnableSequence
from langchain_core.runnables.utils import AddableDict
from pydantic import ValidationError

from rag.answer.citations import CitationStreamFilter, attribute_answer, check_citations, select_sources
from rag.answer.context import ContextAssembler, PackedContext, pack_context, render_context
from rag.answer.conversation import (
    ConversationLayout,
    LayoutMemory,
    flatten,
    follow_up_message,
    renumbered,
    rewrite_follow_up_message,
)
from rag.answer.notes import Note, conversation_restarted, history_trimmed, wait_limited
from rag.answer.qa_prompt import (
    INSUFFICIENT_EN,
    INSUFFICIENT_ZH,
    clean_rewrite,
    is_chinese,
    qa_messages,
    render_rewrite_prompt,
)
from rag.answer.schemas import RagAnswer, RagOptions, RagQuestion
from rag.chunks import ContextChunk
from rag.errors import ConfigError, ContextOverflowError, EmptyStoreError
from rag.llm.prompt import ChatMessage, normalize_messages, render_instruct_prompt
from rag.retrieval.rerankers.base import IdentityReranker

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from rag.chunks import ChunkReader
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.counting import ModelTokens
    from rag.llm.speed import PromptSpeed
    from rag.retrieval.rerankers.base import Reranker

    AnswerModel: TypeAlias = MixtralInstructLLM | BaseChatModel

__all__ = ["PreparedQuestion", "RagChain"]

logger = logging.getLogger("rag.answer.chain")

#: Below this many tokens of room for evidence, older turns of the history are dropped.
_MIN_EVIDENCE = 256
#: Tokens kept free besides the answer reserve: the evidence joins the prompt text at two boundaries.
_SAFETY = 8
#: Turns of history the rewrite prompt sees.
_REWRITE_TURNS = 6
#: Reciprocal-rank fusion's damping constant (Cormack et al. 2009): rank 1 of one query weighs little more than
#: rank 2 of the other, so a passage both queries find comes first.
_RRF_K = 60

FollowUpQuery: TypeAlias = Literal["history", "rewrite"]
"""How a follow-up is retrieved: ``history`` with the follow-up itself and the follow-up after the previous question
(:meth:`RagChain.follow_up_ranking`; no model call: the cache stays, and nothing is waited for); ``rewrite`` has the
model write a standalone question first (one more generation before the answer). Measured in docs/benchmarks.md,
"Follow-ups: what to retrieve with"."""


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


class RagChain:
    """Retrieval, packing and generation with the collaborators it is handed; :attr:`runnable` is the LCEL chain.

    ``retriever`` finds hits; ``reader`` is where passages and their neighbours are read (the local copy beside the
    BM25 index; None: the retrieved documents are packed as they are); ``tokens`` counts and limits of the model
    that reads the prompt; ``document_count`` tells an empty collection (None: not checked). Without an ``llm`` only
    :meth:`prepare` works (the assembled context, counted with ``tokens``): what ``rag ask --no-llm`` prints.
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
    ) -> None:
        if follow_up_query not in ("history", "rewrite"):
            raise ConfigError(f"follow_up_query={follow_up_query!r}: choose 'history' or 'rewrite'")
        self.retriever = retriever
        self.tokens = tokens
        self.llm = llm
        self.reader = reader
        self.document_count = document_count
        self.rewrite_llm = rewrite_llm
        """What makes follow-ups standalone (default: ``llm`` with few tokens); any Runnable str -> str."""
        self.k = k
        """Top hits expanded first, unless a question says otherwise."""
        self.max_context_tokens = max_context_tokens
        """Evidence budget, unless a question says otherwise (None: the window less the prompt and the answer)."""
        self.rewrite_max_tokens = rewrite_max_tokens
        self.top_uncited = top_uncited
        self.empty_message = empty_message
        self.reuse_conversation = reuse_conversation
        """Follow-ups extend the previous turn's prompt (llama.cpp reuses its cache) instead of a fresh one."""
        self.relevance_floor = relevance_floor
        """Hits scoring under this share of the best hit's score are left out (past the top ``k``); 0: none."""
        self.prompt_speed = prompt_speed
        """How fast the model reads prompts here (measured), for :attr:`max_wait_s`."""
        self.max_wait_s = max_wait_s
        """Longest wait for the first token: evidence is cut to what the model reads in it (None: no limit)."""
        self.follow_up_room = follow_up_room
        """Share of the evidence room a fresh prompt leaves free (without an explicit ``max_context_tokens``), so
        follow-ups can extend it."""
        self.follow_up_query = follow_up_query
        """What a follow-up is retrieved with (:data:`FollowUpQuery`)."""
        self.reranker = reranker if reranker is not None else IdentityReranker()
        """The rerank stage: retrieval's best :attr:`rerank_candidates` scored again with the question's queries."""
        self.rerank_candidates = rerank_candidates
        self.rerank_top_n = rerank_top_n
        """Only this many reranked hits are kept as evidence (None: all, then the unscored rest)."""
        self.layouts = LayoutMemory()

    # -- steps -----------------------------------------------------------------------------------------------
    @staticmethod
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

    @staticmethod
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

    @staticmethod
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

    # -- the model: an LLM takes the rendered prompt, a chat model the messages
    @property
    def _is_chat(self) -> bool:
        return isinstance(self.llm, BaseChatModel)

    def _count_prompt(
        self, question: str, context: str, history: list[ChatMessage], system: str = ""
    ) -> tuple[str, list[ChatMessage], int]:
        """The prompt (rendered and as messages) and the tokens the model reads for it."""
        messages = qa_messages(question, context, history, system=system)
        prompt, count = self._render(messages)
        return prompt, messages, count

    def _render(self, messages: list[ChatMessage]) -> tuple[str, int]:
        """``messages`` as the model is given them (a chat model: the messages; an LLM: one prompt string that
        grows at the end only as the conversation does) and the tokens it reads for them."""
        tokens = self.tokens
        if tokens.prompt_format == "mixtral":
            prompt = render_instruct_prompt(messages)
        elif self._is_chat:
            prompt = "\n\n".join(m.content for m in messages)  # shown only: the chat model gets the messages
        else:
            prompt = flatten(messages)
        count = tokens.count_messages(messages) if self._is_chat else tokens.count_prompt(prompt)
        return prompt, count

    def _check_not_empty(self) -> None:
        if self.document_count is not None and self.document_count() == 0:
            raise EmptyStoreError(self.empty_message)

    def budget_for(
        self,
        question: str,
        history: list[ChatMessage],
        max_context_tokens: int | None = None,
        *,
        max_tokens: int | None = None,
        system: str = "",
    ) -> tuple[int, list[ChatMessage], list[str]]:
        """Tokens for evidence (at most ``max_context_tokens``), the history that fits, notes. Drops the oldest turns
        when the history leaves less than a useful amount of room; raises :class:`ContextOverflowError` when the
        question alone does not fit. ``max_tokens``: this answer's reserve (default: the model's)."""
        tokens = self.tokens
        window, notes = tokens.context_window, list[str]()
        reserve = tokens.max_tokens if max_tokens is None else max_tokens
        floor = min(_MIN_EVIDENCE, max(32, window // 8))
        kept = list(history)
        while True:
            overhead = self._count_prompt(question, "", kept, system)[2]
            room = window - reserve - overhead - _SAFETY
            if room >= floor or not kept:
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
        budget = room if max_context_tokens is None else min(room, max_context_tokens)
        cap = self.wait_cap(overhead)
        if cap is not None and cap < budget:
            notes.append(self._wait_note(cap, room))
            budget = cap
        elif self.reuse_conversation and max_context_tokens is None:
            # a fresh prompt leaves room for follow-ups to extend it (else the next turn must start afresh)
            budget = max(1, int(budget * (1 - self.follow_up_room)))
        return budget, kept, notes

    def wait_cap(self, overhead: int) -> int | None:
        """The most evidence the model reads, after ``overhead`` other prompt tokens, within ``max_wait_s`` at the
        measured prompt speed (None: no limit, or the speed is not known yet); never below a useful minimum."""
        if self.max_wait_s is None or self.prompt_speed is None:
            return None
        speed = self.prompt_speed.tokens_per_s()
        if speed is None:
            return None
        return max(_MIN_EVIDENCE, int(self.max_wait_s * speed) - overhead)

    def _wait_note(self, cap: int, room: int) -> Note:
        speed = self.prompt_speed.tokens_per_s() if self.prompt_speed is not None else None
        return wait_limited(cap, room, self.max_wait_s or 0.0, speed or 0.0)

    def _rewrite_call(
        self, question: str, history: Sequence[ChatMessage], layout: ConversationLayout | None = None
    ) -> tuple[Runnable[Any, Any], Any] | None:
        """The model and input that make ``question`` standalone; None when nothing needs rewriting. With the
        conversation's layout, it is asked at the end of the conversation's own prompt (the cache stays)."""
        if not history or (self.llm is None and self.rewrite_llm is None):
            return None
        turns = list(history)[-_REWRITE_TURNS:]
        if self.rewrite_llm is not None:
            return self.rewrite_llm, render_rewrite_prompt(question, turns, prompt_format=self.tokens.prompt_format)
        assert self.llm is not None
        model: Runnable[Any, Any] = self.llm.bind(max_tokens=self.rewrite_max_tokens, temperature=0.0)
        if layout is not None:
            messages = [*layout.messages, ChatMessage("user", rewrite_follow_up_message(question))]
            return model, _langchain_messages(messages) if self._is_chat else self._render(messages)[0]
        # Without a layout (the first follow-up after a fresh start) the rewrite replaces llama.cpp's cached prefix;
        # all the answer prompt could have reused then is its instructions (~180 tokens).
        if self._is_chat:  # one user message: the chat model applies its own template
            return model, [HumanMessage(render_rewrite_prompt(question, turns, prompt_format="native"))]
        return model, render_rewrite_prompt(question, turns, prompt_format=self.tokens.prompt_format)

    def history_queries(self, question: str, history: Sequence[ChatMessage]) -> list[str]:
        """What a follow-up is retrieved with, without a model: itself, and itself after the previous question
        (which carries the topic a pronoun or an elliptical "and X?" leaves out)."""
        previous = next((m.content.strip() for m in reversed(history) if m.role == "user" and m.content.strip()), "")
        if not previous or previous == question:
            return [question]
        return [question, f"{previous}\n{question}"]

    def follow_up_ranking(self, rankings: Sequence[Sequence[Any]]) -> list[Any]:
        """One ranking from :meth:`history_queries`' (the follow-up's own first): each query's best hit leads, in
        that order (a prompt with room for one passage still holds the follow-up's own best), then the rest by
        reciprocal-rank fusion. Measured (bench/follow_ups.py): the topic a pronoun leaves out and a switch
        of topic are both inside the context, where fusion alone missed a tenth of the pronouns."""
        heads = [ranking[0] for ranking in rankings if ranking]
        ordered: dict[str, Any] = {}
        for document in [*heads, *fuse_rankings(rankings)]:
            ordered.setdefault(_document_key(document), document)
        return list(ordered.values())

    def rewrite(self, question: str, history: Sequence[ChatMessage], layout: ConversationLayout | None = None) -> str:
        """``question`` made standalone with the history (LLM, few tokens); the question itself when there is no
        history, no model, or the rewrite is unusable."""
        call = self._rewrite_call(question, history, layout)
        if call is None:
            return question
        try:
            text = call[0].invoke(call[1])
        except ContextOverflowError:
            return question
        return clean_rewrite(_text_of(text), question)

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
        return clean_rewrite(_text_of(text), question)

    def _pack(
        self,
        queries: Sequence[str],
        budget: int,
        k: int,
        sources: list[str] | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> PackedContext:
        return self._pack_documents(self.retrieve(queries, budget=budget, k=k, sources=sources), budget, k, exclude)

    def retrieve(
        self, queries: Sequence[str], *, budget: int, k: int, sources: list[str] | None = None
    ) -> list[Document]:
        """The hits the evidence is packed from, best first: retrieval deep enough to fill ``budget`` (one ranking
        per query, joined by :meth:`follow_up_ranking`) -> the rerank stage -> the relevance floor."""
        depth = ContextAssembler.depth_for(budget, k)
        filters: dict[str, Any] = {"sources": sources} if sources else {}  # only our retriever takes sources
        rankings = [list(self.retriever.invoke(query, k=depth, **filters)) for query in queries]
        found = rankings[0] if len(rankings) == 1 else self.follow_up_ranking(rankings)[:depth]
        if self.reranker.reorders and found:
            head = self.reranker.rerank(queries, found[: self.rerank_candidates], top_n=self.rerank_top_n)
            # the deeper hits, never scored, follow in retrieval's order; a floor or top-n keeps only scored ones
            keep_tail = self.rerank_top_n is None and not self.relevance_floor
            found = head + (found[self.rerank_candidates :] if keep_tail else [])
        if not self.relevance_floor or not found:
            return found
        # hits far below the best one are noise: the budget is not filled with them (the top k always stay)
        best = max(float(d.metadata.get("score") or 0.0) for d in found)
        floor = self.relevance_floor * best
        return [d for i, d in enumerate(found) if i < k or float(d.metadata.get("score") or 0.0) >= floor]

    def _pack_documents(
        self, documents: list[Any], budget: int, k: int, exclude: frozenset[str] = frozenset()
    ) -> PackedContext:
        if self.reader is not None:
            assembler = ContextAssembler(self.reader, self.tokens.count, mixtral_counts=self.tokens.counts_like_mixtral)
            return assembler.assemble(documents, budget, k=k, exclude=exclude)
        chunks = [ContextChunk.from_document(d) for d in documents]
        return pack_context([c for c in chunks if c.chunk_id not in exclude], budget, self.tokens.count)

    def prepare(
        self,
        inputs: Any,
        *,
        k: int | None = None,
        max_context_tokens: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> PreparedQuestion:
        """Rewrite, retrieve, pack and render: the prompt, within the window, and its passages.

        ``k`` and ``max_context_tokens`` are this question's (default: the input's ``options``, then the chain's).
        ``timings``, when given, receives ``rewrite_ms`` (making a follow-up standalone, an LLM call) and
        ``retrieval_ms`` (retrieval, expansion and packing): the figures a UI shows.
        """
        start = self._start(inputs, k, max_context_tokens)
        started = time.perf_counter()
        if self.follow_up_query == "rewrite":
            start.queries = [self.rewrite(start.question, start.history, start.layout)]
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
        if self.follow_up_query == "rewrite":
            start.queries = [await self.arewrite(start.question, start.history, start.layout)]
        rewritten = time.perf_counter()
        prepared = await asyncio.to_thread(self._finish, start)
        if timings is not None:
            timings["rewrite_ms"] = (rewritten - started) * 1000
            timings["retrieval_ms"] = (time.perf_counter() - rewritten) * 1000
        return prepared

    def _start(self, inputs: Any, k: int | None, max_context_tokens: int | None) -> _Start:
        question, history = self.read_input(inputs)
        options = self.read_options(inputs)
        self._check_not_empty()
        if max_context_tokens is None:
            max_context_tokens = options.max_context_tokens
        limit = self.max_context_tokens if max_context_tokens is None else max_context_tokens
        system = self.read_system(inputs)
        budget, kept, notes = self.budget_for(question, history, limit, max_tokens=options.max_tokens, system=system)
        llm_kwargs = {
            key: value
            for key, value in (("temperature", options.temperature), ("max_tokens", options.max_tokens),
                               ("seed", options.seed))
            if value is not None
        }  # fmt: skip
        chosen_k = k if k is not None else options.k if options.k is not None else self.k
        layout = self.layouts.get(system, history) if self.reuse_conversation and history else None
        queries = self.history_queries(question, history) if self.follow_up_query == "history" else [question]
        return _Start(
            question, kept, budget, notes, chosen_k, llm_kwargs, system, options.sources, history, layout, limit,
            queries,
        )  # fmt: skip

    def _finish(self, start: _Start) -> PreparedQuestion:
        if start.layout is not None:
            prepared = self._follow_up(start, start.layout)
            if prepared is not None:
                return prepared
            start.notes.append(conversation_restarted())
        return self._fresh(start)

    def _follow_up(self, start: _Start, layout: ConversationLayout) -> PreparedQuestion | None:
        """The previous turn's prompt, extended by the passages new for this question and the question. Where this
        question's own best passages do not fit after it, the least relevant passages of the first question's
        evidence are dropped from its end, as few as will do (the prompt up to the cut stays cached; what follows
        it is read again). None when the window cannot hold them even then."""
        reserve = start.llm_kwargs.get("max_tokens", self.tokens.max_tokens)
        limit = start.max_context_tokens  # the question's, else the chain's (resolved by _start)
        floor = min(_MIN_EVIDENCE, max(32, self.tokens.context_window // 8))
        needed = floor if limit is None else min(floor, limit)  # a useful amount of evidence (or all that is asked)
        widest = self._without_tail(layout, 0) or layout
        most = self._follow_up_room(start, widest, reserve)
        if most < needed:
            return None  # the conversation so far leaves too little room
        budget = most if limit is None else min(most, limit)
        documents = self.retrieve(start.queries, budget=budget, k=start.k, sources=start.sources)
        # its own best passages: the best hit of each query it is retrieved with (follow_up_ranking puts them first),
        # at least two
        best = documents[: min(start.k, max(2, len(start.queries)))]
        keys = [_document_key(d) for d in best]
        extended = self._extend(start, layout, documents, keys, reserve, needed)
        if extended is not None or widest is layout:
            return extended
        # Dropping earlier evidence makes this follow-up read the turns after the cut again: it reads no more new
        # evidence than a fresh prompt keeps free for follow-ups, or than its own best passages need.
        share = int(self.follow_up_room * (self.tokens.context_window - reserve))
        own = pack_context([ContextChunk.from_document(d) for d in best], most, self.tokens.count).tokens
        most_new = max(share, own + 16 * len(best))  # 16: a passage's label and file heading
        # the most of the first evidence that leaves room for them (binary search: keeping fewer only frees room)
        low, high = 0, (len(layout.passages) if layout.first_block is None else layout.first_block) - 1
        while low <= high:
            keep = (low + high) // 2
            trimmed = self._without_tail(layout, keep)
            attempt = (
                None if trimmed is None
                else self._extend(start, trimmed, documents, keys, reserve, needed, most_new=most_new,
                                  rereads=max(0, self._render(trimmed.messages)[1] - trimmed.tokens))
            )  # fmt: skip
            if attempt is None:
                high = keep - 1
            else:
                extended, low = attempt, keep + 1
        return extended

    def _without_tail(self, layout: ConversationLayout, keep: int) -> ConversationLayout | None:
        """:meth:`ConversationLayout.without_tail`, its ``tokens`` what the model still holds: the first message (and
        the few tokens of the template around it: a figure to show)."""
        trimmed = layout.without_tail(keep, self.tokens.count)
        if trimmed is None:
            return None
        return replace(trimmed, tokens=self._render([trimmed.messages[0], ChatMessage("user", ".")])[1])

    def _follow_up_room(self, start: _Start, layout: ConversationLayout, reserve: int) -> int:
        """Tokens for new evidence after ``layout`` and this question."""
        base = [*layout.messages, ChatMessage("user", follow_up_message(start.question, ""))]
        return self.tokens.context_window - reserve - self._render(base)[1] - _SAFETY - 16  # 16: the block's heading

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
        tokens = self.tokens
        room = self._follow_up_room(start, layout, reserve)
        if room < needed:
            return None
        budget = min([room, *(cap for cap in (start.max_context_tokens, most_new) if cap is not None)])
        notes = list(start.notes)
        # what the model reads: the new message (its question and headings: 32), and the turns after a cut
        cap = self.wait_cap(32 + rereads)
        if cap is not None and cap < budget:
            notes.append(self._wait_note(cap, room))
            budget = cap
        given = frozenset(chunk_id for passage in layout.passages for chunk_id in passage.chunk_ids)
        packed = self._pack_documents(documents, budget, start.k, given)
        for _ in range(3):
            fresh = renumbered(packed.passages, layout.next_number)
            context = render_context(fresh) if fresh else ""
            messages = [*layout.messages, ChatMessage("user", follow_up_message(start.question, context))]
            prompt, prompt_tokens = self._render(messages)
            excess = prompt_tokens + reserve - tokens.context_window
            if excess <= 0:
                break
            packed = pack_context([p.as_chunk() for p in packed.passages], max(0, packed.tokens - excess - 2),
                                  tokens.count)  # fmt: skip
        else:
            return None
        covered = given | {chunk_id for passage in fresh for chunk_id in passage.chunk_ids}
        if not all(chunk_id in covered for chunk_id in best):
            return None  # this question's own best passages must be in its prompt
        evidence = PackedContext(
            text=context,
            passages=[*layout.passages, *fresh],
            tokens=layout.evidence_tokens + packed.tokens,
            budget=budget,
            truncated=packed.truncated,
            notes=packed.notes,
        )
        return start.prepared(
            evidence, prompt, prompt_tokens, budget, messages, follows_up=True, reused_tokens=layout.tokens,
            notes=notes, numbered=max([layout.next_number - 1, *(p.n for p in fresh)]),
            first_block=len(layout.passages) if layout.first_block is None else layout.first_block,
        )  # fmt: skip

    def _fresh(self, start: _Start) -> PreparedQuestion:
        tokens = self.tokens
        budget = start.budget
        reserve = start.llm_kwargs.get("max_tokens", tokens.max_tokens)
        packed = self._pack(start.queries, budget, start.k, start.sources)
        for _ in range(3):
            prompt, messages, prompt_tokens = self._count_prompt(
                start.question, packed.text, start.history, start.system
            )
            excess = prompt_tokens + reserve - tokens.context_window
            if excess <= 0:
                break
            # token boundaries where the evidence meets the prompt: pack again a little smaller
            budget = max(0, packed.tokens - excess - 2)
            packed = pack_context([p.as_chunk() for p in packed.passages], budget, tokens.count)
        return start.prepared(packed, prompt, prompt_tokens, budget, messages)

    def generate(self, prepared: PreparedQuestion, **llm_kwargs: Any) -> Iterator[AddableDict]:
        """The answer in pieces (``{"answer": piece}``), citations checked as they stream; then the sources.

        ``llm_kwargs`` (``temperature``, ``max_tokens``, ``seed``, ...) go to the model for this answer only: a UI
        session's own temperature without changing the shared model.
        """
        answer = _Answer(self, prepared)
        if answer.insufficient is not None:
            yield AddableDict(answer=answer.insufficient)
        else:
            model, model_input = self._answer_call(prepared)
            for piece in model.stream(model_input, **{**prepared.llm_kwargs, **llm_kwargs}):
                shown = answer.feed(_text_of(piece))
                if shown:
                    yield AddableDict(answer=shown)
            rest = answer.flush()
            if rest:
                yield AddableDict(answer=rest)
        yield answer.final()

    async def agenerate(self, prepared: PreparedQuestion, **llm_kwargs: Any) -> AsyncGenerator[AddableDict, None]:
        """:meth:`generate` through the model's async API; closing the stream stops the generation."""
        answer = _Answer(self, prepared)
        if answer.insufficient is not None:
            yield AddableDict(answer=answer.insufficient)
        else:
            model, model_input = self._answer_call(prepared)
            # closed explicitly when this stream is: the model's worker thread stops at its next token
            options = {**prepared.llm_kwargs, **llm_kwargs}  # this call's settings over the question's
            generation = cast("AsyncGenerator[Any, None]", model.astream(model_input, **options))
            async with contextlib.aclosing(generation) as stream:
                async for piece in stream:
                    shown = answer.feed(_text_of(piece))
                    if shown:
                        yield AddableDict(answer=shown)
            rest = answer.flush()
            if rest:
                yield AddableDict(answer=rest)
        yield answer.final()

    def _answer_call(self, prepared: PreparedQuestion) -> tuple[Runnable[Any, Any], Any]:
        if self.llm is None:
            raise ConfigError("no language model: build the chain with an llm (or use prepare() for context only)")
        if self._is_chat:
            return self.llm, _langchain_messages(prepared.messages)
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


def _document_key(document: Any) -> str:
    return str(document.id or document.metadata.get("chunk_id") or document.page_content)


def fuse_rankings(rankings: Sequence[Sequence[Any]], weights: Sequence[float] | None = None) -> list[Any]:
    """Weighted reciprocal-rank fusion of ranked documents (one list per query, ``weights`` one per list, default
    1), best first; a document is known by its id (or ``chunk_id``) and kept once, as its best-ranked copy."""
    scores: dict[str, float] = {}
    first: dict[str, Any] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, document in enumerate(ranking, start=1):
            key = _document_key(document)
            scores[key] = scores.get(key, 0.0) + weight / (_RRF_K + rank)
            first.setdefault(key, document)
    return [first[key] for key in sorted(scores, key=lambda key: -scores[key])]


class _Answer:
    """The answer as it streams: citations checked piece by piece, then the sources it rests on."""

    def __init__(self, chain: RagChain, prepared: PreparedQuestion) -> None:
        self.chain = chain
        self.prepared = prepared
        self.passages = prepared.passages
        self.valid = {p["n"] for p in self.passages}
        self.text = ""
        self.citations = CitationStreamFilter(self.valid)
        self.insufficient: str | None = None
        if not self.passages:
            self.insufficient = INSUFFICIENT_ZH if is_chinese(prepared.question) else INSUFFICIENT_EN
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
        sources = select_sources(self.passages, cited, top_uncited=self.chain.top_uncited)
        if attributed and cited:
            sources = [{**source, "attributed": True} for source in sources]
        if self.insufficient is None and prepared.messages and self.text.strip():
            turns = [
                *prepared.conversation,
                ChatMessage("user", prepared.question),
                ChatMessage("assistant", self.text),
            ]
            layout = ConversationLayout(
                messages=[*prepared.messages, ChatMessage("assistant", self.text)],
                passages=list(prepared.packed.passages),
                evidence_tokens=prepared.packed.tokens,
                tokens=prepared.prompt_tokens + self.chain.tokens.count(self.text),
                first_block=prepared.first_block,
                numbered=prepared.numbered,
            )
            self.chain.layouts.put(prepared.system, turns, layout)
        return AddableDict(
            sources=sources,
            context_tokens=self.prepared.packed.tokens,
            standalone_question=self.prepared.standalone_question,
        )


def _text_of(output: Any) -> str:
    """The text of what a model returned: a string (an LLM) or a message / message chunk (a chat model)."""
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return output.text
    return str(output)


def _langchain_messages(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    kinds: dict[str, type[BaseMessage]] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m.role](m.content) for m in messages]

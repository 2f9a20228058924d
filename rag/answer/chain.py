"""The question-answering chain, handed its collaborators: ``rag.build_chain(settings) -> Runnable`` (LCEL) builds
one (:mod:`rag.app.root`); this module builds nothing.

>>> chain = build_chain(Settings.load(data_dir="data"))
>>> chain.invoke("年假有几天？")["answer"]
>>> history = [("user", "年假有几天？"), ("assistant", "五天[1]")]
>>> for chunk in chain.stream({"question": "那病假呢？", "chat_history": history}):
...     print(chunk)            # {"answer": "..."} pieces as they are generated, then {"sources": [...], ...}

Steps: (follow-up) rewrite to a standalone question with the LLM -> hybrid retrieval, deep enough to fill the
budget -> neighbours, merging, packing to the exact token budget (:mod:`rag.answer.context`) -> the prompt, stable
prefix first (:mod:`rag.answer.qa_prompt`) -> the LLM, streamed -> citations checked (:mod:`rag.answer.citations`)
-> answer and sources.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from rag.answer.citations import CitationStreamFilter, check_citations, select_sources
from rag.answer.context import ContextAssembler, PackedContext, pack_context
from rag.answer.qa_prompt import (
    INSUFFICIENT_EN,
    INSUFFICIENT_ZH,
    clean_rewrite,
    is_chinese,
    render_qa_prompt,
    render_rewrite_prompt,
)
from rag.chunks import ContextChunk
from rag.errors import ConfigError, ContextOverflowError, EmptyStoreError
from rag.llm.prompt import ChatMessage, normalize_messages

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever

    from rag.chunks import ChunkReader
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.counting import ModelTokens

__all__ = ["PreparedQuestion", "RagChain"]

logger = logging.getLogger("rag.answer.chain")

#: Below this many tokens of room for evidence, older turns of the history are dropped.
_MIN_EVIDENCE = 256
#: Tokens kept free besides the answer reserve: the evidence joins the prompt text at two boundaries.
_SAFETY = 8
#: Turns of history the rewrite prompt sees.
_REWRITE_TURNS = 6


@dataclass
class PreparedQuestion:
    """Everything decided before generation."""

    question: str
    standalone_question: str
    history: list[ChatMessage]
    """The history that fits (oldest turns dropped when it did not)."""
    packed: PackedContext
    prompt: str
    prompt_tokens: int
    budget: int
    notes: list[str] = field(default_factory=list)

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
        llm: MixtralInstructLLM | None = None,
        reader: ChunkReader | None = None,
        document_count: Callable[[], int] | None = None,
        k: int = 5,
        max_context_tokens: int | None = None,
        rewrite_max_tokens: int = 48,
        top_uncited: int = 3,
        empty_message: str = "nothing has been ingested yet: run `ingest PATH` (or `rag ingest PATH`) first",
        rewrite_llm: Runnable[Any, str] | None = None,
    ) -> None:
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

    # -- steps -----------------------------------------------------------------------------------------------
    @staticmethod
    def read_input(inputs: Any) -> tuple[str, list[ChatMessage]]:
        """(question, history) from a question string or ``{"question", "chat_history"}``."""
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

    def _check_not_empty(self) -> None:
        if self.document_count is not None and self.document_count() == 0:
            raise EmptyStoreError(self.empty_message)

    def budget_for(
        self, question: str, history: list[ChatMessage], max_context_tokens: int | None = None
    ) -> tuple[int, list[ChatMessage], list[str]]:
        """Tokens for evidence (at most ``max_context_tokens``), the history that fits, notes. Drops the oldest turns
        when the history leaves less than a useful amount of room; raises :class:`ContextOverflowError` when the
        question alone does not fit."""
        tokens = self.tokens
        window, reserve, notes = tokens.context_window, tokens.max_tokens, []
        floor = min(_MIN_EVIDENCE, max(32, window // 8))
        kept = list(history)
        while True:
            overhead = tokens.count_prompt(render_qa_prompt(question, "", kept, prompt_format=tokens.prompt_format))
            room = window - reserve - overhead - _SAFETY
            if room >= floor or not kept:
                break
            kept = kept[2:] if len(kept) >= 2 else []
        if len(kept) < len(history):
            notes.append(f"dropped the {len(history) - len(kept)} oldest turns of the conversation to fit the window")
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
        return budget, kept, notes

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> str:
        """``question`` made standalone with the history (LLM, few tokens); the question itself when there is no
        history, no model, or the rewrite is unusable."""
        if not history or (self.llm is None and self.rewrite_llm is None):
            return question
        # The rewrite replaces llama.cpp's cached prefix, but all the answer prompt could have reused from the last
        # turn is its instructions (~180 tokens): the evidence after them changes with every question. That is
        # under 1 % of a 32K prompt, so a second context (and its KV memory) is not worth it.
        prompt = render_rewrite_prompt(
            question, list(history)[-_REWRITE_TURNS:], prompt_format=self.tokens.prompt_format
        )
        try:
            if self.rewrite_llm is not None:
                text = self.rewrite_llm.invoke(prompt)
            else:
                assert self.llm is not None
                text = self.llm.invoke(prompt, max_tokens=self.rewrite_max_tokens, temperature=0.0)
        except ContextOverflowError:
            return question
        return clean_rewrite(str(text), question)

    def _pack(self, query: str, budget: int, k: int) -> PackedContext:
        depth = ContextAssembler.depth_for(budget, k)
        documents = self.retriever.invoke(query, k=depth)
        if self.reader is not None:
            assembler = ContextAssembler(self.reader, self.tokens.count, mixtral_counts=self.tokens.counts_like_mixtral)
            return assembler.assemble(documents, budget, k=k)
        return pack_context([ContextChunk.from_document(d) for d in documents], budget, self.tokens.count)

    def prepare(
        self,
        inputs: Any,
        *,
        k: int | None = None,
        max_context_tokens: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> PreparedQuestion:
        """Rewrite, retrieve, pack and render: the prompt, within the window, and its passages.

        ``k`` and ``max_context_tokens`` are this question's (default: the chain's). ``timings``, when given,
        receives ``rewrite_ms`` (making a follow-up standalone, an LLM call) and ``retrieval_ms`` (retrieval,
        expansion and packing): the figures a UI shows.
        """
        question, history = self.read_input(inputs)
        self._check_not_empty()
        tokens = self.tokens
        limit = self.max_context_tokens if max_context_tokens is None else max_context_tokens
        budget, kept, notes = self.budget_for(question, history, limit)
        started = time.perf_counter()
        standalone = self.rewrite(question, kept)
        rewritten = time.perf_counter()
        packed = self._pack(standalone, budget, self.k if k is None else k)
        for _ in range(3):
            prompt = render_qa_prompt(question, packed.text, kept, prompt_format=tokens.prompt_format)
            prompt_tokens = tokens.count_prompt(prompt)
            excess = prompt_tokens + tokens.max_tokens - tokens.context_window
            if excess <= 0:
                break
            # token boundaries where the evidence meets the prompt: pack again a little smaller
            budget = max(0, packed.tokens - excess - 2)
            packed = pack_context([p.as_chunk() for p in packed.passages], budget, tokens.count)
        if timings is not None:
            timings["rewrite_ms"] = (rewritten - started) * 1000
            timings["retrieval_ms"] = (time.perf_counter() - rewritten) * 1000
        return PreparedQuestion(question, standalone, kept, packed, prompt, prompt_tokens, budget, notes)

    def generate(self, prepared: PreparedQuestion, **llm_kwargs: Any) -> Iterator[AddableDict]:
        """The answer in pieces (``{"answer": piece}``), citations checked as they stream; then the sources.

        ``llm_kwargs`` (``temperature``, ``max_tokens``, ``seed``, ...) go to the model for this answer only: a UI
        session's own temperature without changing the shared model.
        """
        passages = prepared.passages
        valid = {p["n"] for p in passages}
        answer = ""
        if not passages:
            answer = INSUFFICIENT_ZH if is_chinese(prepared.question) else INSUFFICIENT_EN
            yield AddableDict(answer=answer)
        else:
            if self.llm is None:
                raise ConfigError("no language model: build the chain with an llm (or use prepare() for context only)")
            citations = CitationStreamFilter(valid)
            for piece in self.llm.stream(prepared.prompt, **llm_kwargs):
                shown = citations.feed(piece)
                if shown:
                    answer += shown
                    yield AddableDict(answer=shown)
            rest = citations.flush()
            if rest:
                answer += rest
                yield AddableDict(answer=rest)
        cited = check_citations(answer, valid).cited
        yield AddableDict(
            sources=select_sources(passages, cited, top_uncited=self.top_uncited),
            context_tokens=prepared.packed.tokens,
            standalone_question=prepared.standalone_question,
        )

    @property
    def runnable(self) -> Runnable[Any, dict[str, Any]]:
        """``question | {"question", "chat_history"}`` -> ``{"answer", "sources", "context_tokens", ...}``."""

        def generate(inputs: Iterator[PreparedQuestion]) -> Iterator[AddableDict]:
            for prepared in inputs:
                yield from self.generate(prepared)

        prepare: Runnable[Any, PreparedQuestion] = RunnableLambda(self.prepare, name="rag_prepare")
        return (prepare | RunnableGenerator(generate, name="rag_answer")).with_config(run_name="rag_chain")

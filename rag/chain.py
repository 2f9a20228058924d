"""The question-answering chain: ``rag.build_chain(settings) -> Runnable`` (LCEL).

>>> chain = build_chain(Settings.load(data_dir="data"))
>>> chain.invoke("年假有几天？")["answer"]
>>> history = [("user", "年假有几天？"), ("assistant", "五天[1]")]
>>> for chunk in chain.stream({"question": "那病假呢？", "chat_history": history}):
...     print(chunk)            # {"answer": "..."} pieces as they are generated, then {"sources": [...], ...}

Steps: (follow-up) rewrite to a standalone question with the LLM -> hybrid retrieval, deep enough to fill the budget ->
neighbours, merging, packing to the exact token budget (:mod:`rag.context`) -> the prompt, stable prefix first
(:mod:`rag.qa_prompt`) -> the LLM, streamed -> citations checked (:mod:`rag.citations`) -> answer and sources.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from rag.citations import CitationStreamFilter, check_citations, select_sources
from rag.context import ContextAssembler, ContextChunk, PackedContext, TokenCounter, pack_context
from rag.errors import ConfigError, ContextOverflowError, EmptyStoreError
from rag.prompt import ChatMessage, normalize_messages
from rag.qa_prompt import (
    INSUFFICIENT_EN,
    INSUFFICIENT_ZH,
    clean_rewrite,
    is_chinese,
    render_qa_prompt,
    render_rewrite_prompt,
)

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever

    from rag.llm import MixtralInstructLLM
    from rag.settings import Settings

__all__ = ["PreparedQuestion", "RagChain", "build_chain", "build_rag", "choose_prompt_format"]

logger = logging.getLogger("rag.chain")

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


def choose_prompt_format(llm: MixtralInstructLLM) -> str:
    """``mixtral`` for Mixtral-Instruct models; ``native`` for a local GGUF whose own chat template is another one
    (SmolLM2's ChatML, say). Reads the GGUF's vocabulary only when the model name does not say."""
    if "mixtral" in llm.model.lower() or llm.backend_name != "llama_cpp":
        return "mixtral"
    try:
        llama = getattr(llm.tokenizer, "llama", None)
        template = str((llama.metadata if llama is not None else {}).get("tokenizer.chat_template") or "")
    except Exception:  # the model cannot be read yet: generation will say why
        return "mixtral"
    return "native" if template and "[INST]" not in template else "mixtral"


class RagChain:
    """Retrieval, packing and generation with collaborators passed in; :attr:`runnable` is the LCEL chain.

    Without an ``llm`` only :meth:`prepare` works (the assembled context, counted with the Mixtral tokenizer within
    ``context_window``): what ``rag ask --no-llm`` prints.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        llm: MixtralInstructLLM | None = None,
        *,
        k: int = 5,
        max_context_tokens: int | None = None,
        context_window: int = 32768,
        max_tokens: int = 1024,
        auto_prompt_format: bool = False,
        rewrite_max_tokens: int = 48,
        top_uncited: int = 3,
        empty_message: str | None = None,
        rewrite_llm: Runnable[Any, str] | None = None,
    ) -> None:
        self.retriever = retriever
        self.llm = llm
        self.rewrite_llm = rewrite_llm
        """What makes follow-ups standalone (default: ``llm`` with few tokens); any Runnable str -> str."""
        self.k = k
        self.max_context_tokens = max_context_tokens
        self._context_window = context_window
        self._max_tokens = max_tokens
        self._auto_prompt_format = auto_prompt_format
        self.rewrite_max_tokens = rewrite_max_tokens
        self.top_uncited = top_uncited
        self.empty_message = empty_message
        self._mixtral_tokenizer: Any = None
        self._counts_like_mixtral: bool | None = None

    # -- the model's numbers ---------------------------------------------------------------------------------
    @property
    def prompt_format(self) -> str:
        if self.llm is None:
            return "mixtral"
        if self._auto_prompt_format:
            self.llm.prompt_format = choose_prompt_format(self.llm)  # type: ignore[assignment]
            self._auto_prompt_format = False
        return str(self.llm.prompt_format)

    @property
    def context_window(self) -> int:
        """The model's window (``n_ctx`` clamped to its trained context); without a model, the configured one."""
        return self.llm.context_window if self.llm is not None else self._context_window

    @property
    def max_tokens(self) -> int:
        return self.llm.max_tokens if self.llm is not None else self._max_tokens

    def _tokenizer(self) -> Any:
        if self.llm is not None:
            return self.llm.tokenizer
        if self._mixtral_tokenizer is None:
            from rag.tokens import MixtralTokenizer

            self._mixtral_tokenizer = MixtralTokenizer()
        return self._mixtral_tokenizer

    @property
    def count(self) -> TokenCounter:
        """Exact tokens of a piece of text with the model's tokenizer."""
        tokenizer = self._tokenizer()
        return lambda text: len(tokenizer.encode_text(text))

    @property
    def counts_like_mixtral(self) -> bool:
        """Whether the model's tokenizer is the Mixtral vocabulary (Chinese-Mixtral keeps it), so the token counts
        kept with chunks at ingest hold for it. Decided once, on a probe text, without trusting the model's name."""
        if self._counts_like_mixtral is None:
            if self.llm is None:
                self._counts_like_mixtral = True
            else:
                from rag.tokens import MixtralTokenizer

                probe = "长江全长约6300公里。The Yangtze is 6,300 km long; 黄河 5464 km!"
                try:
                    self._counts_like_mixtral = self._tokenizer().encode_text(probe) == (
                        MixtralTokenizer().encode_text(probe)
                    )
                except Exception:  # the model cannot be read yet: count everything
                    return False
        return self._counts_like_mixtral

    def count_prompt(self, prompt: str) -> int:
        if self.llm is not None:
            return self.llm.count_prompt_tokens(prompt)
        return int(self._tokenizer().count(prompt))

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

    def _check_store(self) -> None:
        store = getattr(self.retriever, "store", None)
        if store is not None and store.count() == 0:
            name = getattr(store, "collection_name", "docs")
            raise EmptyStoreError(
                self.empty_message
                or f"nothing has been ingested into collection '{name}' yet: run `ingest PATH` (or `rag ingest PATH`)"
                " first, with the same --data-dir and --collection"
            )

    def budget_for(self, question: str, history: list[ChatMessage]) -> tuple[int, list[ChatMessage], list[str]]:
        """Tokens for evidence, the history that fits, notes. Drops the oldest turns when the history leaves less
        than a useful amount of room; raises :class:`ContextOverflowError` when the question alone does not fit."""
        window, reserve, notes = self.context_window, self.max_tokens, []
        floor = min(_MIN_EVIDENCE, max(32, window // 8))
        kept = list(history)
        while True:
            overhead = self.count_prompt(render_qa_prompt(question, "", kept, prompt_format=self.prompt_format))
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
        budget = room if self.max_context_tokens is None else min(room, self.max_context_tokens)
        return budget, kept, notes

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> str:
        """``question`` made standalone with the history (LLM, few tokens); the question itself when there is no
        history, no model, or the rewrite is unusable."""
        if not history or (self.llm is None and self.rewrite_llm is None):
            return question
        # The rewrite replaces llama.cpp's cached prefix, but all the answer prompt could have reused from the last
        # turn is its instructions (~180 tokens): the evidence after them changes with every question. That is
        # under 1 % of a 32K prompt, so a second context (and its KV memory) is not worth it.
        prompt = render_rewrite_prompt(question, list(history)[-_REWRITE_TURNS:], prompt_format=self.prompt_format)
        try:
            if self.rewrite_llm is not None:
                text = self.rewrite_llm.invoke(prompt)
            else:
                assert self.llm is not None
                text = self.llm.invoke(prompt, max_tokens=self.rewrite_max_tokens, temperature=0.0)
        except ContextOverflowError:
            return question
        return clean_rewrite(str(text), question)

    def _pack(self, query: str, budget: int) -> PackedContext:
        depth = ContextAssembler.depth_for(budget, self.k)
        documents = self.retriever.invoke(query, k=depth)
        # neighbours come from where the retriever reads passages (the local copy beside the BM25 index)
        reader = getattr(self.retriever, "reader", None) or getattr(self.retriever, "store", None)
        if reader is not None:
            assembler = ContextAssembler(reader, self.count, mixtral_counts=self.counts_like_mixtral)
            return assembler.assemble(documents, budget, k=self.k)
        return pack_context([ContextChunk.from_document(d) for d in documents], budget, self.count)

    def prepare(self, inputs: Any, *, timings: dict[str, float] | None = None) -> PreparedQuestion:
        """Rewrite, retrieve, pack and render: the prompt, within the window, and its passages.

        ``timings``, when given, receives ``rewrite_ms`` (making a follow-up standalone, an LLM call) and
        ``retrieval_ms`` (retrieval, expansion and packing): the figures a UI shows.
        """
        question, history = self.read_input(inputs)
        self._check_store()
        budget, kept, notes = self.budget_for(question, history)
        started = time.perf_counter()
        standalone = self.rewrite(question, kept)
        rewritten = time.perf_counter()
        packed = self._pack(standalone, budget)
        for _ in range(3):
            prompt = render_qa_prompt(question, packed.text, kept, prompt_format=self.prompt_format)
            tokens = self.count_prompt(prompt)
            excess = tokens + self.max_tokens - self.context_window
            if excess <= 0:
                break
            # token boundaries where the evidence meets the prompt: pack again a little smaller
            budget = max(0, packed.tokens - excess - 2)
            packed = pack_context(_chunks_of(packed), budget, self.count)
        if timings is not None:
            timings["rewrite_ms"] = (rewritten - started) * 1000
            timings["retrieval_ms"] = (time.perf_counter() - rewritten) * 1000
        return PreparedQuestion(question, standalone, kept, packed, prompt, tokens, budget, notes)

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


def _chunks_of(packed: PackedContext) -> list[ContextChunk]:
    return [
        ContextChunk(
            chunk_id=p.chunk_id,
            text=p.text,
            source_abs=p.source_abs,
            source=p.source,
            file_name=p.file_name,
            chunk_index=0,
            start=p.start,
            end=p.start + len(p.text),
            page=p.page,
            heading=p.heading,
            score=p.score,
        )
        for p in packed.passages
    ]


def build_rag(
    settings: Settings | None = None,
    *,
    llm: MixtralInstructLLM | None = None,
    retriever: BaseRetriever | None = None,
    use_llm: bool = True,
    k: int = 5,
    prompt_format: str | None = None,
) -> RagChain:
    """A :class:`RagChain` from ``settings`` (the composition root for questions); instant, nothing loads.

    ``use_llm=False``: no language model at all (context only, counted with the Mixtral tokenizer).
    ``prompt_format`` applies to a model built here: ``auto`` picks ``mixtral`` for Mixtral models and the GGUF's
    own chat template for others (see :func:`choose_prompt_format`).
    """
    from rag.settings import Settings

    settings = settings or Settings.load()
    prompt_format = prompt_format or settings.llm_prompt_format
    if prompt_format not in ("auto", "mixtral", "native", "raw"):
        raise ConfigError(f"prompt format {prompt_format!r}: use auto, mixtral, native or raw")
    if retriever is None:
        from rag.service import build_retriever

        retriever = build_retriever(settings)
    auto = False
    if llm is None and use_llm:
        from rag.llm import MixtralInstructLLM

        overrides: dict[str, Any] = {}
        if prompt_format == "auto":
            auto = True
        else:
            overrides["prompt_format"] = prompt_format
        llm = MixtralInstructLLM.from_settings(settings, **overrides)
    data = settings.chroma_url or str(settings.data_dir)
    return RagChain(
        retriever,
        llm if use_llm else None,
        k=k,
        max_context_tokens=settings.max_context_tokens,
        context_window=settings.llm_n_ctx,
        max_tokens=settings.llm_max_tokens,
        auto_prompt_format=auto,
        empty_message=(
            f"nothing has been ingested into collection '{settings.collection}' at {data} yet: "
            f"run `ingest PATH` (or `rag ingest PATH`) first"
        ),
    )


def build_chain(
    settings: Settings | None = None,
    *,
    llm: MixtralInstructLLM | None = None,
    retriever: BaseRetriever | None = None,
    k: int = 5,
    prompt_format: str | None = None,
) -> Runnable[Any, dict[str, Any]]:
    """The question-answering chain for ``settings`` (default: files and environment), as an LCEL ``Runnable``.

    Input: a question, or ``{"question": ..., "chat_history": [(role, text), ...] or LangChain messages}``.
    Output: ``{"answer", "sources": [{"n", "source", "page", "chunk_id", "score", "text", "cited", ...}],
    "context_tokens", "standalone_question"}``; ``.stream()`` yields ``{"answer": piece}`` chunks, then the rest.
    Raises :class:`rag.errors.EmptyStoreError` when nothing was ingested, :class:`ContextOverflowError` when the
    question alone does not fit the window.
    """
    return build_rag(settings, llm=llm, retriever=retriever, k=k, prompt_format=prompt_format).runnable

"""Answering questions as a stream of events with the figures a user wants: what ``rag ask`` and the UI call.

>>> assistant = Assistant(Components(Settings.load()))     # instant: nothing loads yet
>>> for event in assistant.ask("年假有几天？", history=[], options=AskOptions(k=5, temperature=0.2)):
...     if event.kind == "delta":
...         print(event.text, end="")
...     elif event.kind == "done":
...         print(event.sources, event.stats.first_token_ms, event.stats.tokens_per_s)

Events, in order: one ``passages`` (the retrieved evidence and the retrieval figures, before any generation), then
``delta`` pieces of the answer, then one ``done`` (the whole answer, its checked sources and every figure). In
retrieval-only mode (no language model) ``passages`` is followed directly by ``done`` with the assembled context.

One :class:`Assistant` serves every user of a process: its :class:`rag.app.root.Components` keeps one chain per
(collection, retrieval-only), one language model and one embedder per model name, so a second question reloads
nothing. llama.cpp is not thread-safe: everything that touches the model runs under one lock, so concurrent askers
wait their turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from rag.answer.chain import AnswerModel, RagChain
    from rag.app.root import Components
    from rag.settings import Settings

__all__ = ["AnswerEvent", "AnswerStats", "AskOptions", "Assistant"]


@dataclass(frozen=True)
class AskOptions:
    """What one asker chooses per question (a UI session's settings)."""

    collection: str | None = None
    """None: the collection of the assistant's settings."""
    k: int = 5
    """Top hits expanded first."""
    max_context_tokens: int | None = None
    """Evidence budget; None: the settings' (default: the window less the prompt and the answer)."""
    temperature: float | None = None
    """None: the model's configured temperature."""
    max_tokens: int | None = None
    """Most tokens in this answer (at most the model's configured ``max_tokens``, which the budget reserves)."""
    retrieval_only: bool = False
    """Return the assembled evidence without generating; loads no language model."""


@dataclass
class AnswerStats:
    """The figures of one answer. Times in milliseconds, measured with a monotonic clock."""

    rewrite_ms: float = 0.0
    """Making a follow-up question standalone with the model (0 for a first question)."""
    retrieval_ms: float = 0.0
    """Hybrid retrieval, expansion to neighbours and packing into the budget."""
    context_tokens: int = 0
    """Tokens of evidence given to the model (counted with its own tokenizer)."""
    budget: int = 0
    """Tokens the evidence could have taken."""
    prompt_tokens: int = 0
    first_token_ms: float | None = None
    """From receiving the question to the first piece of the answer (what the user waits); None without a model."""
    answer_tokens: int = 0
    tokens_per_s: float | None = None
    """Generation speed after the first token; None when fewer than two tokens came."""
    total_ms: float = 0.0
    to_read_tokens: int = 0
    """Prompt tokens the model must read before it answers (a follow-up: only its new part)."""
    read_tokens: int = 0
    """While it reads (``reading`` events): about how many it has read, from the measured speed."""
    read_left_s: float | None = None
    """About how many seconds of reading are left (None: the speed is not known yet)."""
    reused_tokens: int = 0
    """A follow-up extending the previous turn's prompt: the prompt tokens the model already read then (cached)."""

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value, 1) if isinstance(value, float) else value) for key, value in self.__dict__.items()}


@dataclass
class AnswerEvent:
    kind: Literal["passages", "reading", "delta", "done"]
    """``reading``: every half second while the model reads the prompt (``stats.read_tokens`` of
    ``stats.to_read_tokens``, ``stats.read_left_s``), until the first piece of the answer."""
    text: str = ""
    """``delta``: the new piece; ``done``: the whole answer (empty in retrieval-only mode)."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """``passages``: every passage given to the model; ``done``: the sources of the answer, ``cited`` marked."""
    stats: AnswerStats = field(default_factory=AnswerStats)
    context: str = ""
    """The evidence block as the model reads it (``passages`` and retrieval-only ``done``)."""
    standalone_question: str = ""
    retrieval_only: bool = False
    notes: list[str] = field(default_factory=list)


T = TypeVar("T")


def _paced(items: Iterator[T], *, every_s: float) -> Generator[T | None, None, None]:
    """``items``, produced in a worker thread, with ``None`` every ``every_s`` seconds while none comes (so the
    caller can show progress during a long wait). Closing this generator stops the worker at its next item (it
    closes ``items`` itself, in its own thread)."""
    queue: Queue[tuple[str, Any]] = Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                queue.put(("item", item))
                if stop.is_set():
                    break
        except BaseException as error:
            queue.put(("error", error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            queue.put(("end", None))

    worker = threading.Thread(target=produce, name="answer", daemon=True)
    worker.start()
    try:
        while True:
            try:
                kind, value = queue.get(timeout=every_s)
            except Empty:
                yield None
                continue
            if kind == "end":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=30)


class Assistant:
    """Answers questions over the collections of one data dir (or Chroma server) with the objects of
    ``components`` (the composition root: its settings, its shared model and embedders)."""

    def __init__(self, components: Components) -> None:
        self.components = components
        # llama.cpp is not thread-safe: one generation (or rewrite, or tokenisation) at a time, across all users
        # a Lock, not an RLock: Gradio steps a streaming answer from any worker thread, so the thread that releases
        # the lock (at the end, or at a stop) is often not the one that took it
        self._model_lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        return self.components.settings

    @property
    def use_llm(self) -> bool:
        return self.components.use_llm

    def chain(self, collection: str | None = None, *, retrieval_only: bool = False) -> RagChain:
        """The process's chain for (collection, retrieval-only); built on first use, instantly (models load later)."""
        return self.components.chain(collection, retrieval_only=retrieval_only)

    @property
    def llm(self) -> AnswerModel | None:
        """The shared model (None without one)."""
        return self.components.llm()

    # -- questions -----------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        history: Sequence[Any] = (),
        options: AskOptions | None = None,
    ) -> Generator[AnswerEvent, None, None]:
        """Answer ``question`` given the conversation so far (``[(role, text), ...]`` or LangChain messages).

        Raises the :mod:`rag.errors` types (nothing ingested, a model that cannot be found, ...) from the first
        ``next()``; closing the iterator early (a stop button) stops generation and frees the model.
        """
        options = options or AskOptions()
        started = time.perf_counter()
        retrieval_only = options.retrieval_only or not self.use_llm
        chain = self.chain(options.collection, retrieval_only=retrieval_only)
        timings: dict[str, float] = {}
        with nullcontext() if retrieval_only else self._model_lock:
            prepared = chain.prepare(
                {"question": question, "chat_history": list(history)},
                k=options.k,
                max_context_tokens=options.max_context_tokens,
                timings=timings,
            )
            stats = AnswerStats(
                rewrite_ms=timings.get("rewrite_ms", 0.0),
                retrieval_ms=timings.get("retrieval_ms", 0.0),
                context_tokens=prepared.packed.tokens,
                budget=prepared.budget,
                prompt_tokens=prepared.prompt_tokens,
                reused_tokens=prepared.reused_tokens,
            )
            passages = AnswerEvent(
                "passages",
                sources=prepared.passages,
                stats=stats,
                context=prepared.packed.text,
                standalone_question=prepared.standalone_question,
                retrieval_only=retrieval_only,
                notes=list(prepared.notes),
            )
            yield passages
            if retrieval_only:
                stats.total_ms = (time.perf_counter() - started) * 1000
                yield replace(passages, kind="done")
                return

            generation: dict[str, Any] = {}
            if options.temperature is not None:
                generation["temperature"] = options.temperature
            if options.max_tokens is not None:
                generation["max_tokens"] = min(options.max_tokens, chain.tokens.max_tokens)
            answer, first, sources = "", 0.0, prepared.passages
            stats.to_read_tokens = prepared.prompt_tokens - prepared.reused_tokens
            speed = chain.prompt_speed.tokens_per_s() if chain.prompt_speed is not None else None
            reading_started = time.perf_counter()
            for chunk in _paced(chain.generate(prepared, **generation), every_s=0.5):
                if chunk is None:  # still reading the prompt: say how far it is
                    if answer:
                        continue
                    elapsed = time.perf_counter() - reading_started
                    if speed:
                        stats.read_tokens = min(stats.to_read_tokens, int(elapsed * speed))
                        stats.read_left_s = max(0.0, (stats.to_read_tokens - stats.read_tokens) / speed)
                    yield replace(passages, kind="reading", stats=replace(stats), sources=[], context="")
                    continue
                if "answer" in chunk:
                    if not answer:
                        first = time.perf_counter()
                        stats.first_token_ms = (first - started) * 1000
                    answer += chunk["answer"]
                    yield replace(passages, kind="delta", text=chunk["answer"], sources=[], context="")
                else:
                    sources = list(chunk.get("sources") or [])
            ended = time.perf_counter()
            stats.answer_tokens = chain.tokens.count(answer) if answer else 0
            if stats.answer_tokens > 1 and ended > first:
                stats.tokens_per_s = (stats.answer_tokens - 1) / (ended - first)
            stats.total_ms = (ended - started) * 1000
            yield replace(passages, kind="done", text=answer, sources=sources, context="")

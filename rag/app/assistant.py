"""The answer service: every surface (the browser UI, ``rag ask``, ``rag serve``, the MCP server) asks here and
receives the same typed events.

>>> assistant = Assistant(Components(Settings.load()))     # instant: nothing loads yet
>>> for event in assistant.ask("年假有几天？", history=[], options=AskOptions(k=5, temperature=0.2)):
...     if event.kind == "delta":
...         print(event.text, end="")
...     elif event.kind == "done":
...         print(event.sources, event.stats.first_token_ms, event.stats.tokens_per_s)
>>> async for event in assistant.astream("年假有几天？"):     # the same events, for an event loop
...     ...

Events, in order: one ``passages`` (the retrieved evidence and the retrieval figures, before any generation), then
``reading`` every half second while the model reads the prompt, ``delta`` pieces of the answer, then one ``done``
(the whole answer, its checked sources and every figure, the token counts included). In retrieval-only mode (no
language model) ``passages`` is followed directly by ``done`` with the assembled context.

One :class:`Assistant` serves every user of a process: its :class:`rag.app.root.Components` keeps one chain per
(collection, retrieval-only), one language model and one embedder per model name, so a second question reloads
nothing; its :class:`rag.app.admission.Admission` lets as many answers run at once as the model has slots (one for
llama.cpp in process, which is not thread-safe) and queues the others. :meth:`Assistant.astream` is the service;
:meth:`Assistant.ask` runs it in a thread of its own for callers without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field, replace
from queue import Queue
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from rag.answer.notes import Note
from rag.app.admission import Admission, default_slots

if TYPE_CHECKING:
    from rag.answer.chain import AnswerModel, PreparedQuestion, RagChain
    from rag.answer.context import Passage
    from rag.app.root import Components
    from rag.settings import Settings

__all__ = ["AnswerEvent", "AnswerStats", "AskOptions", "Assistant", "Note"]


@dataclass(frozen=True)
class AskOptions:
    """What one asker chooses per question (a UI session's settings, an API request's parameters)."""

    collection: str | None = None
    """None: the collection of the assistant's settings."""
    k: int | None = 5
    """Top hits expanded first (None: the chain's)."""
    max_context_tokens: int | None = None
    """Evidence budget; None: the settings' (default: the window less the prompt and the answer)."""
    temperature: float | None = None
    """None: the model's configured temperature."""
    max_tokens: int | None = None
    """Most tokens in this answer (at most the model's configured ``max_tokens``, which the budget reserves)."""
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Strings that end the answer (the model alone only: an answer from documents ends at its own end)."""
    sources: tuple[str, ...] = ()
    """Only passages of these files (names, paths, or folders); empty: every file of the collection."""
    retrieval_only: bool = False
    """Return the assembled evidence without generating; loads no language model."""
    use_documents: bool = True
    """False: the model alone answers the conversation, no retrieval (an API's bare model)."""

    def sampling(self, max_tokens_cap: int | None = None) -> dict[str, Any]:
        """This question's generation settings, for the model (those not given keep the model's)."""
        values: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        if self.max_tokens is not None:
            values["max_tokens"] = min(self.max_tokens, max_tokens_cap) if max_tokens_cap else self.max_tokens
        return {key: value for key, value in values.items() if value is not None}


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
    """What the user should know of this answer (a :class:`Note`: English text, a ``code`` to translate it by and
    its ``figures``)."""
    passages: list[Passage] = field(default_factory=list)
    """``passages`` and ``done``: the passages given to the model as records (their files' paths included, which
    the ``sources`` dicts leave out), numbered as the sources are."""


T = TypeVar("T")

#: Seconds between ``reading`` events while the model reads the prompt.
_READING_EVERY_S = 0.5


async def _paced(items: AsyncIterator[T], *, every_s: float) -> AsyncGenerator[T | None, None]:
    """``items``, with ``None`` every ``every_s`` seconds while the first one is awaited (so the caller can show
    progress during a long wait); after the first, as they come."""
    iterator = aiter(items)
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(iterator))
    try:
        while not pending.done():
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
    try:
        yield pending.result()
    except StopAsyncIteration:
        return
    async for item in iterator:
        yield item


def _in_a_thread(events: AsyncGenerator[T, None]) -> Generator[T, None, None]:
    """``events`` consumed on an event loop of its own, in a thread of its own: a plain generator for callers
    without a loop (Gradio may step it from any worker thread). Closing it cancels the stream where it waits (a
    stop button stops the generation and frees the model) and waits for it to end."""
    queue: Queue[tuple[str, Any]] = Queue()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def consume() -> None:
        state["task"], state["loop"] = asyncio.current_task(), asyncio.get_running_loop()
        started.set()
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    queue.put(("event", event))
        except asyncio.CancelledError:
            pass
        except BaseException as error:
            queue.put(("error", error))
        finally:
            queue.put(("end", None))

    worker = threading.Thread(target=asyncio.run, args=(consume(),), name="answer", daemon=True)
    worker.start()
    started.wait()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        if worker.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just closed: nothing left to cancel
                state["loop"].call_soon_threadsafe(state["task"].cancel)
            worker.join(timeout=30)


class Assistant:
    """Answers questions over the collections of one data dir (or Chroma server) with the objects of
    ``components`` (the composition root: its settings, its shared model and embedders).

    ``slots``: answers generated at once (default: 1 for a model in this process, ``serve_slots`` or 4 for a model
    server); ``queue``: answers that may wait for a slot before :class:`rag.errors.BusyError` (None: no limit).
    """

    def __init__(self, components: Components, *, slots: int | None = None, queue: int | None = None) -> None:
        self.components = components
        self.admission = Admission(slots or default_slots(components.settings), queue)

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
        self, question: str, history: Sequence[Any] = (), options: AskOptions | None = None, *, system: str = ""
    ) -> Generator[AnswerEvent, None, None]:
        """:meth:`astream` for callers without an event loop (the UI, ``rag ask``).

        Raises the :mod:`rag.errors` types (nothing ingested, a model that cannot be found, ...) from the first
        ``next()``; closing the iterator early (a stop button) stops generation and frees the model.
        """
        return _in_a_thread(self.astream(question, history, options, system=system))

    async def astream(
        self, question: str, history: Sequence[Any] = (), options: AskOptions | None = None, *, system: str = ""
    ) -> AsyncGenerator[AnswerEvent, None]:
        """Answer ``question`` given the conversation so far (``[(role, text), ...]`` or LangChain messages) and
        the caller's own instructions (``system``).

        The slot is taken before anything is read (a full queue raises :class:`rag.errors.BusyError` from the first
        ``anext()`` and costs nothing), and given back however the stream ends: done, failed, or closed early (the
        generation stops at its next token).
        """
        options = options or AskOptions()
        started = time.perf_counter()
        retrieval_only = options.retrieval_only or not self.use_llm
        if not retrieval_only:
            await self.admission.enter()
        try:
            if options.use_documents:
                events = self._answer(question, history, options, system, started, retrieval_only)
            else:
                events = self._model_alone(question, history, options, system, started)
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    yield event
        finally:
            if not retrieval_only:
                self.admission.leave()

    async def _answer(
        self,
        question: str,
        history: Sequence[Any],
        options: AskOptions,
        system: str,
        started: float,
        retrieval_only: bool,
    ) -> AsyncGenerator[AnswerEvent, None]:
        chain = self.chain(options.collection, retrieval_only=retrieval_only)
        timings: dict[str, float] = {}
        inputs = {
            "question": question,
            "chat_history": list(history),
            "system": system,
            "options": {"sources": list(options.sources)} if options.sources else {},
        }
        prepared = await chain.aprepare(
            inputs, k=options.k, max_context_tokens=options.max_context_tokens, timings=timings
        )
        stats = AnswerStats(
            rewrite_ms=timings.get("rewrite_ms", 0.0),
            retrieval_ms=timings.get("retrieval_ms", 0.0),
            context_tokens=prepared.packed.tokens,
            budget=prepared.budget,
            prompt_tokens=prepared.prompt_tokens,
            reused_tokens=prepared.reused_tokens,
        )
        passages = _passages_event(prepared, stats, retrieval_only)
        yield passages
        if retrieval_only:
            stats.total_ms = (time.perf_counter() - started) * 1000
            yield replace(passages, kind="done")
            return
        stats.to_read_tokens = prepared.prompt_tokens - prepared.reused_tokens
        speed = chain.budget.prompt_speed.tokens_per_s() if chain.budget.prompt_speed is not None else None
        pieces = chain.agenerate(prepared, **options.sampling(chain.tokens.max_tokens))
        answer, first, sources = "", 0.0, prepared.passages
        reading_started = time.perf_counter()
        async with contextlib.aclosing(_paced(pieces, every_s=_READING_EVERY_S)) as stream:
            async for chunk in stream:
                if chunk is None:  # still reading the prompt: say how far it is
                    elapsed = time.perf_counter() - reading_started
                    if speed:
                        stats.read_tokens = min(stats.to_read_tokens, int(elapsed * speed))
                        stats.read_left_s = max(0.0, (stats.to_read_tokens - stats.read_tokens) / speed)
                    yield replace(passages, kind="reading", stats=replace(stats), sources=[], context="", passages=[])
                    continue
                if "answer" in chunk:
                    if not answer:
                        first = time.perf_counter()
                        stats.first_token_ms = (first - started) * 1000
                    answer += chunk["answer"]
                    yield replace(passages, kind="delta", text=chunk["answer"], sources=[], context="", passages=[])
                else:
                    sources = list(chunk.get("sources") or [])
        ended = time.perf_counter()
        stats.answer_tokens = chain.tokens.count(answer) if answer else 0
        _finish(stats, started, first, ended)
        yield replace(passages, kind="done", text=answer, sources=sources, context="")

    async def _model_alone(
        self, question: str, history: Sequence[Any], options: AskOptions, system: str, started: float
    ) -> AsyncGenerator[AnswerEvent, None]:
        """The conversation answered by the model alone, no documents (an API's bare model)."""
        from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

        from rag.llm.prompt import normalize_messages

        chat = self.components.chat_model()
        if chat is None:
            from rag.errors import ConfigError

            raise ConfigError("no language model: this process runs retrieval only (--no-llm)")
        messages: list[BaseMessage] = [SystemMessage(system)] if system else []
        messages += [
            HumanMessage(m.content) if m.role == "user" else AIMessage(m.content)
            for m in normalize_messages(list(history))
            if m.role in ("user", "assistant")
        ]
        messages.append(HumanMessage(question))
        stats = AnswerStats()
        empty = AnswerEvent("passages", stats=stats)
        yield empty
        kwargs = options.sampling()
        if options.stop:
            kwargs["stop"] = list(options.stop)
        answer, first, usage = "", 0.0, None
        # closed explicitly when this stream is: the model's worker thread stops at its next token
        generation = cast("AsyncGenerator[Any, None]", chat.astream(messages, **kwargs))
        async with contextlib.aclosing(generation) as stream:
            async for chunk in stream:
                if chunk.text:
                    if not answer:
                        first = time.perf_counter()
                        stats.first_token_ms = (first - started) * 1000
                    answer += chunk.text
                    yield replace(empty, kind="delta", text=chunk.text)
                usage = getattr(chunk, "usage_metadata", None) or usage
        ended = time.perf_counter()
        if usage:  # what the backend counted
            stats.prompt_tokens, stats.answer_tokens = int(usage["input_tokens"]), int(usage["output_tokens"])
        else:
            stats.prompt_tokens = chat.get_num_tokens_from_messages(messages)
            stats.answer_tokens = chat.get_num_tokens(answer) if answer else 0
        _finish(stats, started, first, ended)
        yield replace(empty, kind="done", text=answer)


def _passages_event(prepared: PreparedQuestion, stats: AnswerStats, retrieval_only: bool) -> AnswerEvent:
    return AnswerEvent(
        "passages",
        sources=prepared.passages,
        stats=stats,
        context=prepared.packed.text,
        standalone_question=prepared.standalone_question,
        retrieval_only=retrieval_only,
        notes=list(prepared.notes),
        passages=list(prepared.packed.passages),
    )


def _finish(stats: AnswerStats, started: float, first: float, ended: float) -> None:
    """The speed and the total, once the answer has ended."""
    if stats.answer_tokens > 1 and ended > first > 0:
        stats.tokens_per_s = (stats.answer_tokens - 1) / (ended - first)
    stats.total_ms = (ended - started) * 1000

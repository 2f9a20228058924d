"""Long-context assembly: packing the best evidence into an exact token budget, numbered for citation.

The pure core is :func:`pack_context`: ranked candidate chunks in, numbered passages and the rendered context out,
counted with the model's own tokenizer. It merges overlapping and adjacent chunks of a file (by their ``start`` /
``end`` offsets: chunk text is a slice of the file's extracted text, so overlaps are never repeated), drops
duplicates, groups passages by document in reading order and fills the budget to within a few tokens, cutting the
last passage that does not fit at a sentence boundary.

:class:`ContextAssembler` is the impure shell: it fetches the neighbours of the retrieved chunks (or whole files
when they fit) from a :class:`rag.chunks.ChunkReader` (the local copy beside the store, or the store itself) and
calls :func:`pack_context`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.chunks import LOW_OCR_CONFIDENCE, ChunkReader, ContextChunk, TokenCounter, document_id

if TYPE_CHECKING:
    from langchain_core.documents import Document

__all__ = [
    "ContextAssembler",
    "ContextChunk",
    "PackedContext",
    "Passage",
    "TokenCounter",
    "cut_to_tokens",
    "pack_context",
    "render_context",
]

# A sentence ends after Chinese or Latin end punctuation (plus closing quotes), or at a line break.
_SENTENCE_END = re.compile(r"[。！？；…!?]+[”’」』）)\]\"']*|[.;:][”’」』）)\]\"']*(?=\s)|\n+")
#: Candidates in a row that may fail to fit before planning stops looking for smaller ones further down.
_PATIENCE = 32
#: Whole files read from the store at a time.
_FILE_BATCH = 16
#: A cut shorter than this many tokens is not worth a passage.
_MIN_CUT = 8
#: Rooms at least this large take part of a sentence longer than the room (text without sentence ends).
_MIN_CHAR_CUT = 64


@dataclass(frozen=True)
class Passage:
    """A numbered passage of the context: merged, non-overlapping text of one file."""

    n: int
    source: str
    source_abs: str
    file_name: str
    page: int | None
    heading: str
    start: int
    end: int
    text: str
    score: float
    chunk_ids: tuple[str, ...]
    ocr_confidence: float | None = None
    """Read by OCR: the lowest recogniser confidence among its chunks (None: from a text layer)."""
    table_header: str = ""
    """The header row of the table the passage starts inside (shown in its label), or empty."""

    @property
    def chunk_id(self) -> str:
        """The passage's first chunk."""
        return self.chunk_ids[0] if self.chunk_ids else ""

    def as_chunk(self) -> ContextChunk:
        """The passage as one chunk of its file (to pack again into a smaller budget)."""
        return ContextChunk(
            chunk_id=self.chunk_id,
            text=self.text,
            source_abs=self.source_abs,
            source=self.source,
            file_name=self.file_name,
            chunk_index=0,
            start=self.start,
            end=self.start + len(self.text),
            page=self.page,
            heading=self.heading,
            score=self.score,
            ocr_confidence=self.ocr_confidence,
            table_header=self.table_header,
        )

    def to_source(self) -> dict[str, Any]:
        """The passage as a source of an answer."""
        return {
            "n": self.n,
            "source": self.source,
            "file_name": self.file_name,
            "page": self.page,
            "heading": self.heading,
            "chunk_id": self.chunk_id,
            "chunk_ids": list(self.chunk_ids),
            "document_id": document_id(self.source_abs),
            "score": round(self.score, 6),
            "text": self.text,
        } | self._ocr_fields()

    def _ocr_fields(self) -> dict[str, Any]:
        """What a source says only where it applies: a table's header row, how sure OCR was of a scan."""
        fields: dict[str, Any] = {"table_header": self.table_header} if self.table_header else {}
        if self.ocr_confidence is not None:
            fields["ocr_confidence"] = round(self.ocr_confidence, 3)
            fields["low_confidence"] = self.ocr_confidence < LOW_OCR_CONFIDENCE
        return fields


@dataclass(frozen=True)
class PackedContext:
    """The evidence block of a prompt."""

    text: str
    """What goes into the prompt."""
    passages: list[Passage]
    tokens: int
    """Exact tokens of :attr:`text` (the model's tokenizer)."""
    budget: int
    """The budget it was packed into."""
    truncated: bool = False
    """Whether some candidate did not fit (was cut or left out)."""
    notes: list[str] = field(default_factory=list)

    @property
    def fill(self) -> float:
        return self.tokens / self.budget if self.budget else 0.0


# -- rendering -------------------------------------------------------------------------------------------------
def _label_text(n: int, page: int | None, heading: str, table_header: str = "") -> str:
    details = ([f"p. {page}"] if page is not None else []) + ([heading] if heading else [])
    if table_header:  # rows of a table continued from above: the reader needs its columns
        details.append(f"table columns: {table_header}")
    return f"[{n}]" + (f" ({'; '.join(details)})" if details else "")


def _label(passage: Passage) -> str:
    return _label_text(passage.n, passage.page, passage.heading, passage.table_header)


def _header(passage: Passage | ContextChunk) -> str:
    return f"## {passage.file_name or passage.source}"


def _blocks(passages: Sequence[Passage]) -> Iterator[tuple[str, str | None]]:
    """The blocks of the rendered context, in order: ``(header, None)`` where a document starts, ``(label, text)``
    for each passage."""
    current: str | None = None
    for passage in passages:
        if passage.source_abs != current:
            current = passage.source_abs
            yield _header(passage), None
        yield _label(passage), passage.text.strip()


def render_context(passages: Sequence[Passage]) -> str:
    """Passages grouped by document (in the order given), each with its ``[n]`` label line."""
    return "\n\n".join(head if body is None else f"{head}\n{body}" for head, body in _blocks(passages))


# -- cutting -----------------------------------------------------------------------------------------------------
def _sentence_ends(text: str) -> list[int]:
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] != len(text):
        ends.append(len(text))
    return ends


def cut_to_tokens(text: str, max_tokens: int, count: TokenCounter, *, from_end: bool = False) -> str:
    """The longest prefix (``from_end``: suffix) of ``text`` of whole sentences within ``max_tokens``.

    When not even the first sentence fits a room of at least 64 tokens, the cut falls between characters instead.
    """
    if max_tokens <= 0 or not text:
        return ""
    if count(text) <= max_tokens:
        return text
    if from_end:
        starts = [0, *(m.end() for m in _SENTENCE_END.finditer(text))]
        candidates = sorted({s for s in starts if s < len(text)}, reverse=True)  # shortest suffix first
        pieces = [text[s:] for s in candidates]
    else:
        pieces = [text[:e] for e in _sentence_ends(text)]
    # binary search: the longest piece that fits (pieces grow in length)
    low, high, best = 0, len(pieces) - 1, ""
    while low <= high:
        middle = (low + high) // 2
        if count(pieces[middle]) <= max_tokens:
            best, low = pieces[middle], middle + 1
        else:
            high = middle - 1
    if best or max_tokens < _MIN_CHAR_CUT:
        return best
    # one sentence longer than a sizeable room: cut between characters
    low, high, chars = 0, len(text), 0
    while low <= high:
        middle = (low + high) // 2
        piece = text[len(text) - middle :] if from_end else text[:middle]
        if count(piece) <= max_tokens:
            chars, low = middle, middle + 1
        else:
            high = middle - 1
    return text[len(text) - chars :] if from_end else text[:chars]


# -- packing -----------------------------------------------------------------------------------------------------
def _uncovered(chunk: ContextChunk, covered: Sequence[list[int]]) -> list[ContextChunk]:
    """The parts of ``chunk`` not yet in the context."""
    if not any(start < chunk.end and end > chunk.start for start, end in covered):
        return [chunk] if chunk.text.strip() else []
    parts: list[ContextChunk] = []
    position = chunk.start
    for start, end in sorted(covered):
        if end <= position or start >= chunk.end:
            continue
        if start > position:
            parts.append(chunk.sliced(position, start))
        position = max(position, end)
    if position < chunk.end:
        parts.append(chunk.sliced(position, chunk.end))
    return [p for p in parts if p.text.strip()]


def _merge(chunks: list[ContextChunk]) -> list[list[ContextChunk]]:
    """Runs of chunks of one file that overlap or touch (or are consecutive chunks) on one page, in reading
    order: a passage never spans two pages, so the page it cites is the page its text is on."""
    runs: list[list[ContextChunk]] = []
    end = -1
    last_index = -10
    for chunk in sorted(chunks, key=lambda c: (c.start, c.end)):
        adjacent = chunk.chunk_index in (last_index, last_index + 1) and chunk.start - end < 4
        if runs and (chunk.start <= end or adjacent) and chunk.page == runs[-1][-1].page:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
        end = max(end, chunk.end)
        last_index = chunk.chunk_index
    return runs


def _passages(chosen: list[ContextChunk], order: list[str]) -> list[Passage]:
    by_file: dict[str, list[ContextChunk]] = defaultdict(list)
    for chunk in chosen:
        by_file[chunk.source_abs].append(chunk)
    passages: list[Passage] = []
    for source in order:
        for run in _merge(by_file.get(source, [])):
            text, end = "", run[0].start
            for chunk in run:
                if chunk.end <= end and text:
                    continue
                if chunk.start < end and text:
                    text += chunk.text[end - chunk.start :]
                else:
                    text += ("\n" if text and chunk.start > end else "") + chunk.text
                end = max(end, chunk.end)
            first = run[0]
            ids = tuple(dict.fromkeys(c.chunk_id for c in run if c.chunk_id))
            passages.append(
                Passage(
                    n=len(passages) + 1,
                    source=first.source,
                    source_abs=first.source_abs,
                    file_name=first.file_name,
                    page=first.page,
                    heading=first.heading,
                    start=first.start,
                    end=end,
                    text=text,
                    score=max(c.score for c in run),
                    chunk_ids=ids,
                    ocr_confidence=min((c.ocr_confidence for c in run if c.ocr_confidence is not None), default=None),
                    table_header=first.table_header,
                )
            )
    return passages


@dataclass
class _Plan:
    chosen: list[ContextChunk]
    order: list[str]
    cut: tuple[int, ContextChunk, bool] | None
    """The last part that was cut: its position in ``chosen``, the whole part, whether its end was kept."""
    truncated: bool
    used: int
    """The plan's estimated tokens."""


def _trimmed(part: ContextChunk, tokens: int, from_end: bool, count: TokenCounter) -> ContextChunk | None:
    text = cut_to_tokens(part.text, tokens, count, from_end=from_end)
    if not text.strip():
        return None
    if from_end:
        return part.sliced(part.end - len(text), part.end)
    return part.sliced(part.start, part.start + len(text))


def _touching(runs: list[list[int]], start: int, end: int) -> list[list[int]]:
    """The runs of a file that ``[start, end)`` overlaps or touches: a part there joins their passage."""
    return [run for run in runs if run[0] <= end and start <= run[1]]


def _join(runs: list[list[int]], start: int, end: int) -> int:
    """Add ``[start, end)`` to a file's runs (sorted, disjoint; touching spans merge); returns the runs it joined."""
    touched = _touching(runs, start, end)
    if not touched:
        bisect.insort(runs, [start, end])
        return 0
    first = touched[0]
    first[0], first[1] = min(start, first[0]), max(end, touched[-1][1])
    for run in touched[1:]:
        runs.remove(run)
    return len(touched)


@dataclass
class _Progress:
    """How far a greedy plan has got: the next candidate to consider and what it has taken so far."""

    position: int = 0
    chosen: list[ContextChunk] = field(default_factory=list)
    runs: dict[str, list[list[int]]] = field(default_factory=lambda: defaultdict(list))
    """Per file: the spans taken, merged as the passages will be."""
    order: list[str] = field(default_factory=list)
    """Files, by their best candidate."""
    owner: dict[str, str] = field(default_factory=dict)
    """Text fingerprint -> the file it was first seen in."""
    passages: int = 0
    used: int = 0

    def copy(self) -> _Progress:
        runs: dict[str, list[list[int]]] = defaultdict(list)
        runs.update((source, [run[:] for run in spans]) for source, spans in self.runs.items())
        return _Progress(self.position, self.chosen[:], runs, self.order[:], dict(self.owner), self.passages, self.used)


def _greedy(pool: _Pool, target: int, costs: _Costs, start: _Progress | None = None) -> tuple[_Plan, _Progress | None]:
    """Take candidates in order while their cost in the rendered context fits ``target``; cut the first that does
    not; stop when nothing has fitted for a while (the rest of the candidates is never read).

    Also returns a checkpoint: the progress just before the first candidate that did not fit whole. Up to there
    the plan is the same for any target of at least the checkpoint's ``used`` plus ``_MIN_CUT``, so a later round
    with such a target resumes from it (``start``) instead of planning everything again.
    """
    state = start.copy() if start is not None else _Progress()
    chosen, runs, order, owner = state.chosen, state.runs, state.order, state.owner
    truncated = False
    misses = 0
    cut: tuple[int, ContextChunk, bool] | None = None
    checkpoint: _Progress | None = None
    while (candidate := pool.get(state.position)) is not None:
        if target - state.used < _MIN_CUT or misses > _PATIENCE:
            if checkpoint is None:
                checkpoint = state.copy()
            truncated = True
            break
        state.position += 1
        fingerprint = "".join(candidate.text.split())  # whitespace-blind; str.split beats a regex here
        if owner.setdefault(fingerprint, candidate.source_abs) != candidate.source_abs:
            continue  # the same text in another file (a copy): once is enough
        spans = runs[candidate.source_abs]
        undo = (len(chosen), len(order), state.passages, state.used, [run[:] for run in spans])
        for part in _uncovered(candidate, spans):
            new_file = not spans
            joins = len(_touching(spans, part.start, part.end))
            # a part that starts a passage pays for its label; one that bridges two passages saves one
            overhead = (costs.header(part) if new_file else 0) + costs.label(part, state.passages + 1) * (1 - joins)
            cost = costs.inline(part, candidate) + overhead
            if state.used + cost > target:
                if checkpoint is None:  # the progress before this candidate
                    checkpoint = state.copy()
                    checkpoint.position -= 1
                    taken, files, checkpoint.passages, checkpoint.used, checkpoint.runs[candidate.source_abs] = undo
                    del checkpoint.chosen[taken:], checkpoint.order[files:]  # (its fingerprint maps to its own file)
                truncated = True
                misses += 1
                room = target - state.used - overhead
                if room < _MIN_CUT:
                    continue
                before = any(run[0] == part.end for run in spans)  # text leading into a passage: keep its end
                smaller = _trimmed(part, room, before, costs.count)
                if smaller is None:
                    continue
                cut = (len(chosen), part, before)
                part, cost = smaller, costs.inline(smaller, candidate) + overhead
            misses = 0
            if new_file:
                order.append(part.source_abs)
            chosen.append(part)
            state.passages += 1 - _join(spans, part.start, part.end)
            state.used += cost
    return _Plan(chosen, order, cut, truncated, state.used), checkpoint


class _Costs:
    """Token counts for planning and for the rendered context, memoised for the rounds of one packing.

    Planning counts a part as it appears in the context: after a line break or another part, where SentencePiece
    adds no leading space (a chunk counted on its own pays a token for it when it starts with a Chinese character);
    a part cut from a chunk is estimated in proportion to the chunk's count. With the Mixtral vocabulary
    (``mixtral_counts``), the rendered context is counted exactly passage by passage: no token of that vocabulary
    spans a line break, so a text's count is its lines' counts added up, and a later round recounts only the
    passages it changed. Other tokenizers count the whole rendered text.
    """

    def __init__(self, count: TokenCounter, mixtral_counts: bool) -> None:
        self._count = count
        self._mixtral_counts = mixtral_counts
        self._memo: dict[str, int] = {}
        self._space: dict[str, int] = {}  # first character -> tokens its leading space costs on its own
        self._newline = count("\n")

    def count(self, text: str) -> int:
        """Exact tokens of ``text`` on its own (memoised)."""
        found = self._memo.get(text)
        if found is None:
            found = self._memo[text] = self._count(text)
        return found

    def alone(self, chunk: ContextChunk) -> int:
        """Tokens of a chunk on its own: the count kept from ingest when there is one."""
        if self._mixtral_counts and chunk.mixtral_tokens is not None:
            self._memo[chunk.text] = chunk.mixtral_tokens  # for cutting it, should it not fit
            return chunk.mixtral_tokens
        return self.count(chunk.text)

    def _after_newline(self, text: str) -> int:
        return self.count("\n" + text) - self._newline if text else 0

    def inline(self, part: ContextChunk, whole: ContextChunk) -> int:
        """Tokens of ``part`` (``whole`` or a slice of it) after a line break or another part."""
        if part is whole:
            tokens = self.alone(whole)
        else:
            tokens = max(1, round(self.alone(whole) * len(part.text) / max(1, len(whole.text))))
        first = part.text[:1]
        if "\u3400" <= first <= "\u9fff":
            first = "中"  # Chinese characters all pay alike (the Mixtral vocabulary has no "▁" + CJK piece)
        space = self._space.get(first)
        if space is None:
            space = self._space[first] = self.count(first) - self._after_newline(first)
        return tokens - space

    def label(self, part: ContextChunk, n: int) -> int:
        """A new passage: the blank line before it, its ``[n] (p. ...)`` label and the line break after it."""
        return 3 + self._after_newline(_label_text(n, part.page, part.heading, part.table_header))

    def header(self, part: ContextChunk) -> int:
        """A new document: the blank line before it and its ``## file`` header."""
        return 2 + self._after_newline(_header(part))

    def rendered(self, passages: Sequence[Passage]) -> tuple[str, int]:
        """:func:`render_context` of ``passages`` and its exact token count."""
        text = render_context(passages)
        if not text or not self._mixtral_counts:
            return text, self.count(text) if text else 0
        tokens = 0
        for position, (head, body) in enumerate(_blocks(passages)):
            # every block but the first (a document header, with the leading space) follows a blank line
            tokens += self.count(head) if position == 0 else 2 + self._after_newline(head)
            if body is not None:
                tokens += 1 + self._after_newline(body)
        return text, tokens


def _rendered(plan: _Plan, costs: _Costs) -> tuple[list[Passage], str, int]:
    passages = _passages(plan.chosen, plan.order)
    text, tokens = costs.rendered(passages)
    return passages, text, tokens


class _Pool:
    """Candidates read from an iterator as far as packing gets, kept for the next planning round: the candidates
    beyond the budget (most of them, with many small hits) are never read from the store."""

    def __init__(self, candidates: Iterable[ContextChunk]) -> None:
        self._items: list[ContextChunk] = []
        self._source: Iterator[ContextChunk] = iter(candidates)

    def get(self, position: int) -> ContextChunk | None:
        """The candidate at ``position``; None past the last one."""
        while position >= len(self._items):
            following = next(self._source, None)
            if following is None:
                return None
            self._items.append(following)
        return self._items[position]


def pack_context(
    candidates: Iterable[ContextChunk], budget: int, count: TokenCounter, *, mixtral_counts: bool = False
) -> PackedContext:
    """Fill ``budget`` tokens with ``candidates``, best first; see the module docstring.

    ``candidates`` come in priority order (a chunk's ``score`` is its retrieval score; neighbours carry the score of
    the hit they surround); an iterator is read only as far as the budget needs. A candidate that no longer fits
    whole is cut at a sentence boundary to the room left; smaller later candidates may still fill what remains. The
    result never exceeds ``budget`` (exactly counted).
    ``mixtral_counts``: ``count`` is the Mixtral vocabulary's, so the counts kept with whole chunks at ingest are
    used instead of counting them again, and the rendered context is counted passage by passage (exactly: see
    ``_Costs``).
    """
    pool = _Pool(candidates)
    costs = _Costs(count, mixtral_counts)
    counted = costs.count

    # Plan with estimated costs, count the rendered text exactly, and plan again with the target moved by
    # the difference (labels and joins cost less or more than estimated): a few rounds converge.
    target = budget
    plan, checkpoint = _greedy(pool, target, costs)
    checkpoints = [checkpoint] if checkpoint is not None else []
    passages, text, tokens = _rendered(plan, costs)
    best: tuple[_Plan, list[Passage], str, int] | None = (plan, passages, text, tokens) if tokens <= budget else None
    for _ in range(4):
        slack = budget - tokens
        if 0 <= slack <= max(2, budget // 500) or (not plan.truncated and slack >= 0):
            break
        # aim a little under: the estimate errs by a few tokens either way, and over the budget costs a round
        target = max(0, target + slack - max(2, budget // 1000))
        valid = [c for c in checkpoints if c.used + _MIN_CUT <= target]
        start = max(valid, key=lambda c: c.used) if valid else None
        (plan, checkpoint), previous = _greedy(pool, target, costs, start), tokens
        if checkpoint is not None:
            checkpoints.append(checkpoint)
        passages, text, tokens = _rendered(plan, costs)
        if tokens == previous:
            break  # the cut falls on the same sentence boundary: another round changes nothing
        if tokens <= budget and (best is None or tokens > best[3]):
            best = (plan, passages, text, tokens)
    if best is None:  # still over: shrink the cut part (or the last one) until it fits
        for _ in range(8):
            if tokens <= budget or not plan.chosen:
                break
            position, _, from_end = plan.cut or (len(plan.chosen) - 1, plan.chosen[-1], False)
            victim = plan.chosen[position]
            room = counted(victim.text) - (tokens - budget) - 2
            smaller = _trimmed(victim, room, from_end, counted) if room >= _MIN_CUT else None
            if smaller is not None:
                plan.chosen[position] = smaller
            else:
                del plan.chosen[position]
                plan.cut = None
                plan.order = [s for s in plan.order if any(c.source_abs == s for c in plan.chosen)]
            plan.truncated = True
            passages, text, tokens = _rendered(plan, costs)
        while passages and tokens > budget:  # a last resort that keeps the promise
            passages = passages[:-1]
            text, tokens = costs.rendered(passages)
        best = (plan, passages, text, tokens)
    plan, passages, text, tokens = best
    return PackedContext(text=text, passages=passages, tokens=tokens, budget=budget, truncated=plan.truncated)


# -- fetching neighbours ---------------------------------------------------------------------------------------
class ContextAssembler:
    """Turns retrieved chunks into a packed context: neighbours and whole files from ``store`` (any
    :class:`rag.chunks.ChunkReader`), then :func:`pack_context`.

    ``count`` is the model's exact token counter (``llm.tokenizer.encode_text``, or
    :class:`rag.llm.tokenizer.MixtralTokenizer`'s); ``mixtral_counts``: it counts like the Mixtral vocabulary (see
    :func:`pack_context`).
    ``neighbours``: how many chunks on each side of a top hit to consider; ``whole_file_chunks``: files of at most
    this many chunks are taken whole when their estimated size fits the budget.
    """

    def __init__(
        self,
        store: ChunkReader,
        count: TokenCounter,
        *,
        neighbours: int = 2,
        whole_file_chunks: int = 48,
        mixtral_counts: bool = False,
    ) -> None:
        self.store = store
        self.count = count
        self.mixtral_counts = mixtral_counts
        self.neighbours = neighbours
        self.whole_file_chunks = whole_file_chunks

    @staticmethod
    def depth_for(budget: int, k: int, *, tokens_per_chunk: int = 128, limit: int = 256) -> int:
        """How many chunks to ask the retriever for to fill ``budget`` (small chunks assumed: deep enough)."""
        return max(k, min(limit, math.ceil(budget / tokens_per_chunk)))

    def candidates(self, hits: Sequence[ContextChunk], budget: int, *, k: int = 5) -> Iterator[ContextChunk]:
        """Hits and their surroundings in priority order, each chunk once: each top-``k`` hit with its neighbours
        (or its whole file when that fits), then the deeper hits with theirs, then rings of neighbours around every
        hit, nearest first. Read from the store a few files or a ring at a time, as far as the consumer iterates."""
        if not hits:
            return
        estimate = max(1.0, sum(max(1, len(h.text)) for h in hits[:k]) / min(len(hits), k))  # chars per chunk
        whole: list[str] = []
        planned = 0.0
        for hit in hits:
            size = hit.chunk_count * estimate
            if hit.source_abs in whole:
                continue
            if 0 < hit.chunk_count <= self.whole_file_chunks and planned + size <= budget * 1.5:
                whole.append(hit.source_abs)
                planned += size
        # neighbours on each side: enough for the hits' surroundings to fill the budget (few hits, long files)
        tokens_per_chunk = max(1.0, estimate / 2)  # a Chinese character is about a token, English ~4 a token
        radius = max(self.neighbours, min(64, math.ceil(budget / (tokens_per_chunk * len(hits)))))
        in_whole = {source: rank for rank, source in enumerate(whole)}
        by_file: dict[str, list[ContextChunk]] = {}
        by_position: dict[tuple[str, int], ContextChunk] = {}

        def fetch_files(source: str) -> list[ContextChunk]:
            if source not in by_file:  # with the next few whole files: packing may stop before it needs them
                batch = [s for s in whole[in_whole[source] : in_whole[source] + _FILE_BATCH] if s not in by_file]
                by_file.update((s, []) for s in batch)
                for chunk in sorted(self.store.chunks_of_files(batch), key=lambda c: c.chunk_index):
                    by_file[chunk.source_abs].append(chunk)
            return by_file[source]

        def fetch(offsets: Iterable[int], ranked: Sequence[ContextChunk]) -> None:
            wanted: dict[str, set[int]] = defaultdict(set)
            for hit in ranked:
                if hit.source_abs not in in_whole:
                    for offset in offsets:
                        index = hit.chunk_index + offset
                        if index >= 0 and (hit.source_abs, index) not in by_position:
                            wanted[hit.source_abs].add(index)
            if wanted:
                by_position.update(((c.source_abs, c.chunk_index), c) for c in self.store.chunks_by_index(wanted))

        seen: set[str] = set()

        def near(hit: ContextChunk, offsets: Iterable[int]) -> Iterator[ContextChunk]:
            for offset in offsets:
                found = by_position.get((hit.source_abs, hit.chunk_index + offset))
                if found is not None and found.chunk_id not in seen:
                    seen.add(found.chunk_id)
                    yield found.scored(hit.score)

        fetch((-1, 1), hits[:k])
        for rank, hit in enumerate(hits):
            if hit.chunk_id not in seen:
                seen.add(hit.chunk_id)
                yield hit
            if hit.source_abs in in_whole:
                for chunk in fetch_files(hit.source_abs):  # the chunks seen make a file's second visit empty
                    if chunk.chunk_id not in seen:
                        seen.add(chunk.chunk_id)
                        yield chunk.scored(hit.score)
            elif rank < k:
                yield from near(hit, (-1, 1))
        for distance in range(1, radius + 1):  # then the surroundings of every hit, nearest first
            fetch((-distance, distance), hits)
            for hit in hits:
                yield from near(hit, (-distance, distance))

    def assemble(
        self, documents: Sequence[Document], budget: int, *, k: int = 5, exclude: Collection[str] = ()
    ) -> PackedContext:
        """Pack the retrieved ``documents`` (best first) and their surroundings into ``budget`` tokens; chunks in
        ``exclude`` (given earlier in the conversation) are left out."""
        hits = [chunk for chunk in map(ContextChunk.from_document, documents) if chunk.chunk_id not in exclude]
        candidates = self.candidates(hits, budget, k=k)
        if exclude:
            candidates = (chunk for chunk in candidates if chunk.chunk_id not in exclude)
        return pack_context(candidates, budget, self.count, mixtral_counts=self.mixtral_counts)

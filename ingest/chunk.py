"""Chinese- and English-aware chunking, sized in the embedding model's own tokens.

Pure functions of their inputs. A chunk never crosses a heading or a page, ends at a sentence end where it can
(。！？；… and .!?; followed by a space, or a line break), keeps a table whole when it fits, and carries its heading
path. Its text is an exact slice of the document's extracted text, so offsets point at the passage.
Every chunk's embedding input (heading line + text) is recounted at the end: none exceeds ``max_tokens``, so the
embedder never truncates silently.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Protocol

from ingest.load import LoadedDocument
from rag.chunks import PageBox, with_heading

__all__ = ["CHUNKER_VERSION", "Chunk", "EmbedderTokenCounter", "chunk_document", "split_sentences"]

#: Part of every chunk's signature: bump when chunk boundaries (or the text loaders give) change, so stores re-chunk.
#: 3: tables of PDF text layers come with their column headers.
CHUNKER_VERSION = "3"


class EmbedderTokenCounter(Protocol):
    """What the chunker needs from the embedding model's tokenizer (chunks are sized in the embedder's tokens,
    not the LLM's: that is :data:`rag.chunks.TokenCounter`)."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text, special tokens excluded."""
        ...

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text``."""
        ...


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    """Offset of the chunk in the document's extracted text."""
    end: int
    heading: str
    """Heading path, outermost first, joined with ' > '."""
    page: int | None
    index: int
    embed_text: str
    """What the embedder reads: the heading line (and the header row of a table continued from an earlier
    chunk), then the text."""
    tokens: int
    """Embedder tokens of :attr:`embed_text`."""
    ocr_confidence: float | None = None
    """Text read by OCR: the recogniser's lowest confidence in it (None: not from OCR)."""
    table_header: str = ""
    """The header row of the table this chunk continues (it starts below that row), repeated for the embedder and
    the reader; empty when the chunk does not start inside a table."""
    boxes: tuple[PageBox, ...] = ()
    """Where its text lies on its page(s): a few rectangles per line (empty for formats without pages)."""

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()[:32]


# A sentence ends after Chinese end punctuation (plus closing quotes/brackets), after .;: followed by
# whitespace or a CJK character (not inside 3.5 or e.g), or at a line break.
_SENTENCE_END = re.compile(
    r"[。！？；…!?]+[”’」』）)\]\"']*|[.;:][”’」』）)\]\"']*(?=\s|[\u3000-\u9fff\uff00-\uffef])|\n+"
)


def split_sentences(text: str, start: int = 0) -> list[tuple[int, int]]:
    """Spans (absolute, with ``start`` added) of the sentences of ``text``; whitespace between them is left out."""
    spans = []
    position = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if text[position:end].strip():
            spans.append((position, end))
        position = end
    if text[position:].strip():
        spans.append((position, len(text)))
    result = []
    for begin, end in spans:
        piece = text[begin:end]
        left = len(piece) - len(piece.lstrip())
        right = len(piece.rstrip())
        result.append((start + begin + left, start + begin + right))
    return result


@dataclass(frozen=True)
class _Draft:
    heading: str
    embedded_heading: str
    page: int | None
    start: int
    end: int
    table_header: str = ""


@dataclass
class _Unit:
    start: int
    end: int
    tokens: int


def chunk_document(
    document: LoadedDocument, counter: EmbedderTokenCounter, *, max_tokens: int, overlap: int
) -> list[Chunk]:
    """Split ``document`` into chunks of at most ``max_tokens`` embedder tokens, ``overlap`` tokens shared."""
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    overlap = max(0, min(overlap, max_tokens // 2))
    text = document.text
    sections = _sections(document)
    heading_lines = sorted({heading for heading, _, _ in sections if heading})
    heading_tokens = dict(zip(heading_lines, counter.count_tokens(heading_lines), strict=True))

    # Sentences (or whole tables) of every section, counted in one batch call.
    section_units: list[list[tuple[int, int]]] = []
    for _, _, spans in sections:
        units: list[tuple[int, int]] = []
        for begin, end, kind in spans:
            if kind == "table":
                units.append((begin, end))
            else:
                units.extend(split_sentences(text[begin:end], begin))
        section_units.append(units)
    flat = [span for units in section_units for span in units]
    counts = iter(counter.count_tokens([text[b:e] for b, e in flat]))

    tables = [(begin, end) for _, _, spans in sections for begin, end, kind in spans if kind == "table"]
    headers = _table_headers(tables, text, counter, max_tokens)
    drafts: list[_Draft] = []
    for (heading, page, spans), units in zip(sections, section_units, strict=True):
        # A heading line costs its tokens plus the line break; a pathological one (over a quarter of the
        # budget) stays in the metadata but is not embedded.
        cost = heading_tokens[heading] + 1 if heading else 0
        embedded_heading = heading if cost <= max_tokens // 4 else ""
        budget = max_tokens - (cost if embedded_heading else 0)
        # a table split over chunks repeats its header row: rows are packed leaving room for it
        header_cost = max((headers[(b, e)][1] for b, e, kind in spans if kind == "table" and (b, e) in headers),
                          default=0)  # fmt: skip
        measured = [_Unit(b, e, next(counts)) for b, e in units]
        for begin, end in _pack(_fit_units(measured, text, counter, budget - header_cost), budget - header_cost,
                                overlap):  # fmt: skip
            header = next((headers[t][0] for t in headers if t[0] < begin < t[1]), "")
            drafts.append(_Draft(heading, embedded_heading, page, begin, end, header))

    return _with_boxes(_with_ocr_confidence(_finalise(drafts, text, counter, max_tokens), document), document)


def _with_boxes(chunks: list[Chunk], document: LoadedDocument) -> list[Chunk]:
    """Each chunk with the rectangles its text covers on its page(s) (unchanged for formats without pages)."""
    if document.boxes is None or not len(document.boxes):
        return chunks
    located = document.boxes
    return [replace(chunk, boxes=located.locate(chunk.start, chunk.end)) for chunk in chunks]


def _table_headers(
    tables: list[tuple[int, int]], text: str, counter: EmbedderTokenCounter, max_tokens: int
) -> dict[tuple[int, int], tuple[str, int]]:
    """The header row (first line) and its cost in tokens of each table of more than one row that does not fit
    in one chunk; a header over an eighth of the budget is not repeated."""
    candidates = {}
    for begin, end in tables:
        first_line = text[begin:end].split("\n", 1)[0]
        if "\n" in text[begin:end].strip() and first_line.strip():
            candidates[(begin, end)] = first_line
    if not candidates:
        return {}
    whole = counter.count_tokens([text[b:e] for b, e in candidates])
    lines = counter.count_tokens(list(candidates.values()))
    return {
        span: (line, tokens + 1)
        for (span, line), total, tokens in zip(candidates.items(), whole, lines, strict=True)
        if total > max_tokens // 2 and tokens + 1 <= max_tokens // 8
    }


def _with_ocr_confidence(chunks: list[Chunk], document: LoadedDocument) -> list[Chunk]:
    """Each chunk's lowest OCR confidence among the elements it overlaps (chunks of text layers unchanged)."""
    read = [
        (offset, offset + len(element.text), element.ocr_confidence)
        for element, offset in zip(document.elements, document.offsets, strict=True)
        if element.ocr_confidence is not None
    ]
    if not read:
        return chunks
    starts = [start for start, _, _ in read]
    result = []
    for chunk in chunks:
        first = max(0, bisect.bisect_right(starts, chunk.start) - 1)
        overlapping = [c for start, end, c in read[first : bisect.bisect_left(starts, chunk.end)] if end > chunk.start]
        result.append(replace(chunk, ocr_confidence=min(overlapping)) if overlapping else chunk)
    return result


def _sections(document: LoadedDocument) -> list[tuple[str, int | None, list[tuple[int, int, str]]]]:
    """Runs of body elements sharing heading path and page: (heading, page, [(start, end, kind)])."""
    sections: list[tuple[str, int | None, list[tuple[int, int, str]]]] = []
    for element, offset in zip(document.elements, document.offsets, strict=True):
        heading = " > ".join(element.heading)
        if element.kind == "title":
            continue  # titles travel as the heading path of what follows them
        span = (offset, offset + len(element.text), element.kind)
        if sections and sections[-1][0] == heading and sections[-1][1] == element.page:
            sections[-1][2].append(span)
        else:
            sections.append((heading, element.page, [span]))
    if not sections:  # a document made only of titles: keep them as text
        for element, offset in zip(document.elements, document.offsets, strict=True):
            sections.append(("", element.page, [(offset, offset + len(element.text), "text")]))
    return sections


def _fit_units(units: list[_Unit], text: str, counter: EmbedderTokenCounter, budget: int) -> list[_Unit]:
    """Split units larger than the budget at token boundaries (long sentences, big tables by rows first)."""
    fitted: list[_Unit] = []
    for unit in units:
        if unit.tokens <= budget:
            fitted.append(unit)
            continue
        piece = text[unit.start : unit.end]
        rows = [(unit.start + m.start(), unit.start + m.end()) for m in re.finditer(r"[^\n]+", piece)]
        if len(rows) > 1:
            row_counts = counter.count_tokens([text[b:e] for b, e in rows])
            fitted.extend(
                _fit_units(
                    [_Unit(b, e, n) for (b, e), n in zip(rows, row_counts, strict=True)],
                    text,
                    counter,
                    budget,
                )
            )
            continue
        spans = counter.token_spans(piece)
        for first in range(0, len(spans), budget):
            window = spans[first : first + budget]
            fitted.append(_Unit(unit.start + window[0][0], unit.start + window[-1][1], len(window)))
    return fitted


def _pack(units: list[_Unit], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy packing of consecutive units; the next chunk repeats trailing units up to ``overlap`` tokens."""
    chunks: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        total = 0
        last = first
        while last < len(units) and total + units[last].tokens <= budget:
            total += units[last].tokens
            last += 1
        last = max(last, first + 1)
        chunks.append((units[first].start, units[last - 1].end))
        if last >= len(units):
            break
        # step back over trailing units that fit in the overlap, but always move forward
        back, shared = last, 0
        while back - 1 > first and shared + units[back - 1].tokens <= overlap:
            back -= 1
            shared += units[back].tokens
        first = back
    return chunks


def _finalise(drafts: list[_Draft], text: str, counter: EmbedderTokenCounter, max_tokens: int) -> list[Chunk]:
    """Recount each chunk's real embedding input; halve any that still exceeds the limit (rare: tokens
    at the joins of sentences need not add up exactly)."""
    pending = list(drafts)
    while True:
        inputs = [_embed_text(d.embedded_heading, _with_header(d.table_header, text[d.start : d.end])) for d in pending]
        counts = counter.count_tokens(inputs)
        if all(n <= max_tokens for n in counts):
            break
        replaced: list[_Draft] = []
        for draft, count in zip(pending, counts, strict=True):
            if count <= max_tokens:
                replaced.append(draft)
                continue
            spans = counter.token_spans(text[draft.start : draft.end])
            middle = draft.start + spans[len(spans) // 2][0] if len(spans) > 1 else draft.end
            if not draft.start < middle < draft.end:
                raise ValueError(f"cannot split a chunk of {count} tokens to fit {max_tokens}")
            replaced.append(replace(draft, end=middle))
            replaced.append(replace(draft, start=middle))
        pending = replaced
    return [
        Chunk(
            text[d.start : d.end],
            d.start,
            d.end,
            d.heading,
            d.page,
            index,
            inputs[index],
            counts[index],
            table_header=d.table_header,
        )
        for index, d in enumerate(pending)
    ]


def _with_header(header: str, body: str) -> str:
    return f"{header}\n{body}" if header else body


def _embed_text(heading: str, body: str) -> str:
    return with_heading(heading, body)

"""The chunk record and the reader protocol that every layer shares: nothing in the project is below this module.

A chunk is an exact slice ``[start, end)`` of a file's extracted text with its position (file, index, page,
heading). The store and the local rows table write and read it, the assembler packs it, the chain cites it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from langchain_core.documents import Document

__all__ = [
    "BOXES_KEY",
    "LOW_OCR_CONFIDENCE",
    "ChunkReader",
    "ChunkRow",
    "ContextChunk",
    "PageBox",
    "TokenCounter",
    "decode_boxes",
    "document_id",
    "encode_boxes",
    "with_heading",
]

#: OCR text the recogniser is less sure of than this is kept (a wrong character beats a lost sentence) but marked
#: ``low_confidence`` in the chunk's metadata and its sources.
LOW_OCR_CONFIDENCE = 0.6

TokenCounter = Callable[[str], int]
"""Exact number of tokens of a piece of text, with the model's own tokenizer (no BOS/EOS)."""

ChunkRow = tuple[str, str, dict[str, Any]]
"""(chunk id, text, metadata) of one stored chunk."""


class ContextChunk(NamedTuple):
    """One chunk from the store (or a sentence-cut part of one): an exact slice ``[start, end)`` of a file.

    A named tuple, not a dataclass: assembly builds thousands per question at small chunk sizes, and a tuple is
    made five times faster than a frozen dataclass (``__init__`` through ``object.__setattr__``).
    """

    chunk_id: str
    text: str
    source_abs: str
    source: str
    file_name: str
    chunk_index: int
    start: int
    end: int
    page: int | None = None
    heading: str = ""
    score: float = 0.0
    chunk_count: int = 0
    mixtral_tokens: int | None = None
    """Tokens of ``text`` with the Mixtral vocabulary, counted at ingest (None: not known)."""
    ocr_confidence: float | None = None
    """Read by OCR from a scan: the recogniser's lowest confidence in it (None: from a text layer)."""
    table_header: str = ""
    """The header row of the table this chunk continues (shown in its label), or empty."""

    @classmethod
    def from_store(cls, chunk_id: str, text: str, meta: Mapping[str, Any], score: float = 0.0) -> ContextChunk:
        start = int(meta.get("start", 0) or 0)
        end = meta.get("end")
        page = meta.get("page")
        tokens = meta.get("mixtral_tokens")
        confidence = meta.get("ocr_confidence")
        return cls(
            chunk_id=chunk_id,
            text=text,
            source_abs=str(meta.get("source_abs") or meta.get("source") or ""),
            source=str(meta.get("source") or meta.get("source_abs") or ""),
            file_name=str(meta.get("file_name") or ""),
            chunk_index=int(meta.get("chunk_index", 0) or 0),
            start=start,
            end=int(end) if isinstance(end, int) else start + len(text),
            page=int(page) if isinstance(page, int) else None,
            heading=str(meta.get("heading") or ""),
            score=float(score),
            chunk_count=int(meta.get("chunk_count", 0) or 0),
            mixtral_tokens=tokens if isinstance(tokens, int) else None,
            ocr_confidence=float(confidence) if isinstance(confidence, int | float) else None,
            table_header=str(meta.get("table_header") or ""),
        )

    @classmethod
    def from_document(cls, document: Document) -> ContextChunk:
        meta = document.metadata
        chunk_id = str(meta.get("chunk_id") or document.id or "")
        return cls.from_store(chunk_id, document.page_content, meta, float(meta.get("score", 0.0) or 0.0))

    def sliced(self, start: int, end: int) -> ContextChunk:
        """The part ``[start, end)`` (absolute offsets, clipped to this chunk)."""
        start, end = max(start, self.start), min(end, self.end)
        if start == self.start and end == self.end:
            return self  # the whole chunk is its own part (the common case)
        text = self.text[start - self.start : end - self.start]
        return self._replace(text=text, start=start, end=end, mixtral_tokens=None)

    def scored(self, score: float) -> ContextChunk:
        """This chunk carrying ``score`` (a neighbour takes its hit's)."""
        return self if score == self.score else self._replace(score=score)


class ChunkReader(Protocol):
    """Reads stored chunks by id and by position: the Chroma store itself, or the local copy beside it
    (:class:`rag.retrieval.lexical.LexicalIndex`), which answers the same questions without a round trip to Chroma."""

    def chunks(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Text and metadata of the chunks ``ids`` that exist."""
        ...

    def chunks_by_index(self, wanted: Mapping[str, Iterable[int]]) -> list[ContextChunk]:
        """The chunks ``{source_abs: chunk indices}`` that exist, in no particular order."""
        ...

    def chunks_of_files(self, sources: Iterable[str]) -> list[ContextChunk]:
        """Every chunk of the files ``sources`` (``source_abs``)."""
        ...

    def sources(self) -> list[str]:
        """Every file (``source_abs``) that has chunks."""
        ...


def document_id(source_abs: str) -> str:
    """A document's id on every surface (HTTP, MCP, page views): stable, opaque (no path in a URL or a tool's
    answer), the same in every worker; documents are found by id among a collection's files."""
    return "doc-" + hashlib.sha256(source_abs.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def with_heading(heading: str, text: str) -> str:
    """A chunk as the retrievers read it: its heading path on the first line, then its text."""
    return f"{heading}\n{text}" if heading else text


class PageBox(NamedTuple):
    """One rectangle a chunk's text covers on its page: the page number (1-based; an image's frame) and the edges,
    from the page's top-left corner as it is shown (a PDF page's /Rotate applied), in page units: PDF points (1/72
    inch) for PDF pages, text layers and OCR'd scans alike; pixels for images."""

    page: int
    left: float
    top: float
    right: float
    bottom: float


#: The chunk metadata key that holds its boxes (:func:`encode_boxes`); absent in stores built before boxes existed.
BOXES_KEY = "boxes"


def encode_boxes(boxes: Iterable[PageBox]) -> str:
    """Boxes as the compact JSON string a chunk's metadata keeps (Chroma takes scalars only):
    ``[[page, left, top, right, bottom], ...]``, edges to a tenth of a unit."""
    rows = [[box.page, *(round(float(edge), 1) for edge in box[1:])] for box in boxes]
    return json.dumps(rows, separators=(",", ":"))


def decode_boxes(value: object) -> tuple[PageBox, ...]:
    """The boxes of a chunk's metadata value (:func:`encode_boxes`); none for a missing or malformed one (a store
    built before boxes existed, or a hand-edited row)."""
    if not isinstance(value, str) or not value:
        return ()
    try:
        rows = json.loads(value)
    except ValueError:
        return ()
    boxes = []
    for row in rows if isinstance(rows, list) else ():
        if (
            isinstance(row, list)
            and len(row) == 5
            and isinstance(row[0], int)
            and all(isinstance(edge, int | float) for edge in row[1:])
        ):
            boxes.append(PageBox(row[0], float(row[1]), float(row[2]), float(row[3]), float(row[4])))
    return tuple(boxes)

"""Where a document's text lies on its pages: boxes of spans of the extracted text, and a chunk's few rectangles.

A :class:`TextBoxes` maps spans ``[start, end)`` of :attr:`LoadedDocument.text` to a box on a page. Text PDFs give
one span per character, from pypdfium2's text page (pypdf, which extracts the text, reports no positions); the
text pypdf extracted is aligned with pdfium's on their non-space characters, since the two read the same content
stream but differ in spacing, line breaks and, for tables, layout. OCR gives one span per recognised line. A chunk's
boxes (:meth:`TextBoxes.locate`) are its spans merged into one rectangle per run of text on a line, so a chunk
keeps a handful of rectangles, not one per character.

Coordinates are the page as shown: origin at the top-left corner, the page's /Rotate applied, in PDF points (OCR'd
pages scaled back from the resolution they were read at); images in pixels.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunks import PageBox

__all__ = ["Span", "TextBoxes", "align_text", "pdf_char_boxes"]

Span = tuple[int, int, int, float, float, float, float]
"""(start, end, page, left, top, right, bottom): text ``[start, end)`` lies in that box."""

_VISIBLE = re.compile(r"\S")
# Characters compared at once when the two texts agree, and the length of the probe that finds where they agree
# again after a difference (long enough that a table's repeated numbers rarely match by chance).
_RUN = 64
_PROBE = 8
#: Characters read as one box at most (their first and last asked of pdfium): pdfium's per-character calls are
#: most of what boxes cost at ingest; a chunk cut inside a run is cut in proportion.
_GROUP = 8


@dataclass(frozen=True)
class TextBoxes:
    """Boxes of spans of a document's text, sorted by start; spans do not overlap."""

    starts: np.ndarray
    ends: np.ndarray
    pages: np.ndarray
    edges: np.ndarray
    """(n, 4): left, top, right, bottom."""

    @classmethod
    def from_spans(cls, spans: Iterable[Span]) -> TextBoxes:
        ordered = sorted(span for span in spans if span[1] > span[0] and span[5] > span[4] and span[6] >= span[4])
        if not ordered:
            return cls.empty()
        table = np.asarray(ordered, dtype=np.float64)
        return cls(
            starts=table[:, 0].astype(np.int64),
            ends=table[:, 1].astype(np.int64),
            pages=table[:, 2].astype(np.int32),
            edges=table[:, 3:7].astype(np.float32),
        )

    @classmethod
    def empty(cls) -> TextBoxes:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 4), np.float32))

    @classmethod
    def joined(cls, parts: Sequence[TextBoxes]) -> TextBoxes:
        """The boxes of several parts of one document (pages of different kinds), in text order."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        starts = np.concatenate([part.starts for part in parts])
        order = np.argsort(starts, kind="stable")
        return cls(
            starts=starts[order],
            ends=np.concatenate([part.ends for part in parts])[order],
            pages=np.concatenate([part.pages for part in parts])[order],
            edges=np.concatenate([part.edges for part in parts])[order],
        )

    def __len__(self) -> int:
        return len(self.starts)

    def locate(self, start: int, end: int) -> tuple[PageBox, ...]:
        """The rectangles of text ``[start, end)``: its spans merged along each line (a span cut by the range is
        cut in proportion: an OCR line the chunk starts inside); a new rectangle at each page, line or wide gap
        (a table's next cell, the other column)."""
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        if last <= first:
            return ()
        starts, ends = self.starts[first:last], self.ends[first:last]
        pages = self.pages[first:last]
        edges = self.edges[first:last].astype(np.float64)
        lengths = (ends - starts).astype(np.float64)
        low = np.clip((start - starts) / lengths, 0.0, 1.0)
        high = np.clip((end - starts) / lengths, 0.0, 1.0)
        width = edges[:, 2] - edges[:, 0]
        left = edges[:, 0] + width * low
        right = edges[:, 0] + width * high
        top, bottom = edges[:, 1], edges[:, 3]
        # span i continues span i-1 on its line when they share most of the line's thickness and i follows close
        # after: rightwards (horizontal text), or down or up (text of a rotated page, or set vertically)
        height = np.maximum(bottom - top, 1e-3)
        width = np.maximum(right - left, 1e-3)
        shared_height = np.minimum(bottom[1:], bottom[:-1]) - np.maximum(top[1:], top[:-1])
        shared_width = np.minimum(right[1:], right[:-1]) - np.maximum(left[1:], left[:-1])
        tall = np.maximum(height[1:], height[:-1])
        wide = np.maximum(width[1:], width[:-1])
        rightwards = (shared_height >= 0.3 * np.minimum(height[1:], height[:-1])) & _close(left[1:] - right[:-1], tall)
        across = shared_width >= 0.3 * np.minimum(width[1:], width[:-1])
        downwards = across & _close(top[1:] - bottom[:-1], wide)
        upwards = across & _close(top[:-1] - bottom[1:], wide)
        breaks = (pages[1:] != pages[:-1]) | ~(rightwards | downwards | upwards)
        heads = np.concatenate([[0], np.flatnonzero(breaks) + 1])
        merged = zip(
            pages[heads].tolist(),
            np.minimum.reduceat(left, heads).tolist(),
            np.minimum.reduceat(top, heads).tolist(),
            np.maximum.reduceat(right, heads).tolist(),
            np.maximum.reduceat(bottom, heads).tolist(),
            strict=True,
        )
        return tuple(PageBox(int(page), *edges_) for page, *edges_ in merged)


def _close(gap: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Whether a gap between two spans along a line is one of the same run: at most a little overlap back (kerning)
    and at most a word space or two forward (a table's next cell, the other column, are further)."""
    return (gap >= -0.5 * thickness) & (gap <= 1.5 * thickness)


def align_text(ours: str, theirs: str) -> list[int]:
    """For each character of ``ours``, the index of the same character in ``theirs`` (-1: none). Both are the same
    text read by two extractors: they agree over long runs; after a difference, the next ``_PROBE`` characters of
    ours are looked for further on in theirs (then anywhere: the order may differ), else one of ours is skipped."""
    found = [-1] * len(ours)
    i = j = 0
    while i < len(ours):
        if j < len(theirs) and ours[i] == theirs[j]:
            run = 1
            while ours[i + run : i + run + _RUN] == theirs[j + run : j + run + _RUN] and i + run + _RUN <= len(ours):
                run += _RUN
            while i + run < len(ours) and j + run < len(theirs) and ours[i + run] == theirs[j + run]:
                run += 1
            found[i : i + run] = range(j, j + run)
            i += run
            j += run
            continue
        probe = ours[i : i + _PROBE]
        at = theirs.find(probe, j)
        if at < 0:
            at = theirs.find(probe)
        if at >= 0 and (len(probe) == _PROBE or at >= j):
            j = at
            continue
        i += 1
    return found


def pdf_char_boxes(path: Path, text: str, pages: dict[int, list[tuple[int, int]]]) -> TextBoxes:
    """Boxes of the characters of ``text`` on the text pages of the PDF at ``path``; ``pages``: page number ->
    the ranges of ``text`` (its elements) extracted from that page."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    parts = []
    try:
        for number, ranges in pages.items():
            ours = [m.start() for begin, stop in ranges for m in _VISIBLE.finditer(text, begin, stop)]
            if not ours:
                continue
            page = document[number - 1]
            try:
                parts.append(_page_spans(page, number, text, ours))
            finally:
                page.close()
    finally:
        document.close()
    return TextBoxes.joined(parts)


def _page_spans(page: Any, number: int, text: str, ours: list[int]) -> TextBoxes:
    """The boxes of the characters at offsets ``ours`` of ``text``, all from page ``number``.

    Asking pdfium for a character's box is most of the cost, so characters are taken in runs of up to
    :data:`_GROUP` that are consecutive in both texts (a word, a number, a few CJK characters): a run is one span,
    the box of its first and last characters together when those two share a line, else a span per character."""
    import pypdfium2.raw as pdfium

    textpage = page.get_textpage()
    try:
        count = textpage.count_chars()
        theirs_text = textpage.get_text_range(0, count) if count > 0 else ""
        if len(theirs_text) != count:  # pdfium left out or added characters: read them one by one
            theirs_text = "".join(chr(pdfium.FPDFText_GetUnicode(textpage.raw, i) or 32) for i in range(count))
        theirs = [m.start() for m in _VISIBLE.finditer(theirs_text)]
        matched = align_text("".join(text[i] for i in ours), "".join(theirs_text[i] for i in theirs))
        handle = textpage.raw
        get_box = pdfium.FPDFText_GetCharBox
        left, right, bottom, top = (ctypes.c_double() for _ in range(4))
        refs = (ctypes.byref(left), ctypes.byref(right), ctypes.byref(bottom), ctypes.byref(top))

        def box(index: int) -> tuple[float, float, float, float] | None:
            if not get_box(handle, index, *refs):
                return None
            return left.value, bottom.value, right.value, top.value

        spans: list[tuple[int, int]] = []
        boxes: list[tuple[float, float, float, float]] = []
        for first, last in _runs(np.asarray(ours, dtype=np.int64), np.asarray(matched, dtype=np.int64)):
            head = box(theirs[matched[first]])
            if first == last:
                if head is not None:
                    spans.append((ours[first], ours[first] + 1))
                    boxes.append(head)
                continue
            tail = box(theirs[matched[last]])
            if head is not None and tail is not None and _one_line(head, tail):
                spans.append((ours[first], ours[last] + 1))
                boxes.append((min(head[0], tail[0]), min(head[1], tail[1]), max(head[2], tail[2]),
                              max(head[3], tail[3])))  # fmt: skip
                continue
            for k in range(first, last + 1):  # a run over a line break: a span per character
                found = box(theirs[matched[k]])
                if found is not None:
                    spans.append((ours[k], ours[k] + 1))
                    boxes.append(found)
    finally:
        textpage.close()
    if not spans:
        return TextBoxes.empty()
    shown = _to_shown(page, np.asarray(boxes, dtype=np.float64))
    bounds = np.asarray(spans, dtype=np.int64)
    keep = (shown[:, 2] > shown[:, 0]) & (shown[:, 3] > shown[:, 1])
    return TextBoxes(
        starts=bounds[keep, 0],
        ends=bounds[keep, 1],
        pages=np.full(int(keep.sum()), number, dtype=np.int32),
        edges=shown[keep].astype(np.float32),
    )


def _runs(ours: np.ndarray, matched: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) positions of the runs: matched characters consecutive in our text and in pdfium's, at most
    :data:`_GROUP` long."""
    found = np.flatnonzero(matched >= 0)
    if not len(found):
        return []
    ours, theirs = ours[found], matched[found]
    heads = np.ones(len(found), dtype=bool)
    heads[1:] = (np.diff(ours) != 1) | (np.diff(theirs) != 1)
    starts = np.flatnonzero(heads)
    # position inside its run, to cut runs every _GROUP characters
    position = np.arange(len(found)) - np.repeat(starts, np.diff(np.append(starts, len(found))))
    heads |= position % _GROUP == 0
    starts = np.flatnonzero(heads)
    ends = np.append(starts[1:], len(found)) - 1
    return list(zip(found[starts].tolist(), found[ends].tolist(), strict=True))


def _one_line(head: tuple[float, float, float, float], tail: tuple[float, float, float, float]) -> bool:
    """Whether two character boxes (left, bottom, right, top) lie on one line of horizontal or vertical text."""
    shared_height = min(head[3], tail[3]) - max(head[1], tail[1])
    shared_width = min(head[2], tail[2]) - max(head[0], tail[0])
    height = min(head[3] - head[1], tail[3] - tail[1])
    width = min(head[2] - head[0], tail[2] - tail[0])
    return shared_height >= 0.5 * height or shared_width >= 0.5 * width


def _to_shown(page: Any, corners: np.ndarray) -> np.ndarray:
    """PDF user-space boxes (left, bottom, right, top) as boxes of the page as shown (left, top, right, bottom
    from its top-left corner, in points, /Rotate and the crop box's origin applied): pdfium's own page-to-device
    mapping, taken at three points as an affine map."""
    import pypdfium2.raw as pdfium

    width, height = page.get_size()
    scale = 64  # device coordinates are integers: map at 64x and divide back, for 1/64-point precision
    out_x, out_y = ctypes.c_int(), ctypes.c_int()

    def device(x: float, y: float) -> tuple[float, float]:
        pdfium.FPDF_PageToDevice(
            page.raw, 0, 0, round(width * scale), round(height * scale), 0, x, y, ctypes.byref(out_x),
            ctypes.byref(out_y),
        )  # fmt: skip
        return out_x.value / scale, out_y.value / scale

    origin = np.asarray(device(0.0, 0.0))
    along_x = (np.asarray(device(1000.0, 0.0)) - origin) / 1000.0
    along_y = (np.asarray(device(0.0, 1000.0)) - origin) / 1000.0
    xs = corners[:, [0, 2, 0, 2]]
    ys = corners[:, [1, 1, 3, 3]]
    shown_x = origin[0] + xs * along_x[0] + ys * along_y[0]
    shown_y = origin[1] + xs * along_x[1] + ys * along_y[1]
    return np.stack([shown_x.min(axis=1), shown_y.min(axis=1), shown_x.max(axis=1), shown_y.max(axis=1)], axis=1)

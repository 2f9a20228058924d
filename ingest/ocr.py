"""Reading scans: text out of images (and out of PDF pages without a text layer) with an offline OCR engine.

The engine is RapidOCR on onnxruntime (``rapidocr-onnxruntime``, the ``ocr`` extra): PP-OCRv4 Chinese/English
detection and recognition models ship inside its wheel, so nothing is downloaded. It loads on first use.
:func:`paragraphs` puts the recognised lines in reading order and joins the lines of one paragraph (no space
between two Chinese characters, one between words).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.chunks import LOW_OCR_CONFIDENCE

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["LOW_CONFIDENCE", "OCR_MISSING", "OcrEngine", "OcrLine", "OcrParagraph", "OcrTimeout", "paragraphs"]

OCR_MISSING = "a scan or image: install chinese-mixtral-rag[ocr] to read scans (pip install rapidocr-onnxruntime)"
LOW_CONFIDENCE = LOW_OCR_CONFIDENCE
#: The longest side a page is read at: a poster-sized scan is scaled down first, which bounds the time and memory
#: of one page (detection cost grows with the pixel count; 4,000 px keeps 8-pt text of an A3 page at 250 dpi).
MAX_SIDE = 4000
#: Seconds one page may take (0.5 s is usual here; a dense poster-sized page a few seconds): past it the page is
#: given up, named in the report, and keeps what its text layer had.
PAGE_TIME_LIMIT_S = 60.0
_CJK_END = re.compile(r"[\u3400-\u9fff\u3000-\u303f\uff00-\uffef]$")
_CJK_START = re.compile(r"^[\u3400-\u9fff\u3000-\u303f\uff00-\uffef]")


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its text, the recogniser's confidence and its box (pixels)."""

    text: str
    confidence: float
    left: float
    top: float
    bottom: float
    right: float = 0.0

    @property
    def height(self) -> float:
        return max(1.0, self.bottom - self.top)


@dataclass(frozen=True)
class OcrParagraph:
    """Lines of one paragraph joined, with the lowest confidence among them."""

    text: str
    confidence: float
    lines: tuple[tuple[int, int, OcrLine], ...] = ()
    """Where each of its lines lies in :attr:`text`: (start, end, line)."""

    @property
    def low_confidence(self) -> bool:
        return self.confidence < LOW_CONFIDENCE


class OcrTimeout(Exception):
    """A page took longer than the engine's time limit per page."""


class _Deadline:
    """Wraps one of RapidOCR's onnxruntime sessions: refuses to start a model run once the page's time is up.
    Detection is one run and recognition runs in batches of a few lines, so a page stops within one batch of its
    limit (onnxruntime cannot interrupt a run that has started)."""

    def __init__(self, session: Any, engine: OcrEngine) -> None:
        self._session = session
        self._engine = engine

    def __call__(self, *args: Any) -> Any:
        self._engine.check_deadline()
        return self._session(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class OcrEngine:
    """RapidOCR, loaded on first use and shared by the loader threads (one recognition at a time: onnxruntime
    already uses every core for one page).

    ``page_time_limit_s``: seconds one page may take before :meth:`read` gives up with :class:`OcrTimeout`
    (None: no limit)."""

    def __init__(self, page_time_limit_s: float | None = PAGE_TIME_LIMIT_S) -> None:
        if page_time_limit_s is not None and page_time_limit_s <= 0:
            raise ValueError(f"page_time_limit_s must be positive, got {page_time_limit_s}")
        self.page_time_limit_s = page_time_limit_s
        self._engine: Any = None
        self._lock = threading.Lock()
        self._deadline: float | None = None

    @staticmethod
    def available() -> bool:
        """Whether the OCR extra is installed."""
        import importlib.util

        return importlib.util.find_spec("rapidocr_onnxruntime") is not None

    def warm_up(self) -> None:
        """Load the models now. Raises ``ImportError`` with :data:`OCR_MISSING` when the extra is missing."""
        with self._lock:
            if self._engine is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as error:
                    raise ImportError(OCR_MISSING) from error
                engine = RapidOCR()
                engine.text_det.infer = _Deadline(engine.text_det.infer, self)
                engine.text_cls.infer = _Deadline(engine.text_cls.infer, self)
                engine.text_rec.session = _Deadline(engine.text_rec.session, self)
                self._engine = engine

    def check_deadline(self) -> None:
        """Raise :class:`OcrTimeout` when the page being read is past its time limit."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise OcrTimeout(f"OCR stopped at the limit of {self.page_time_limit_s:g} s per page")

    def read(self, image: Image) -> list[OcrLine]:
        """The lines of ``image`` (any mode), in no particular order. Raises :class:`OcrTimeout` past the time
        limit per page."""
        import numpy as np

        self.warm_up()
        with self._lock:
            started = time.monotonic()
            if self.page_time_limit_s is not None:
                self._deadline = started + self.page_time_limit_s
            size = max(image.size)
            try:
                if size > MAX_SIDE:
                    image = image.copy()
                    image.thumbnail((MAX_SIDE, MAX_SIDE))
                pixels = np.asarray(image.convert("RGB"))
                result, _ = self._engine(pixels)
            finally:
                self._deadline = None
        back = size / max(image.size)  # boxes of a scaled-down page, in the pixels of the page as given
        lines = []
        for box, text, confidence in result or []:
            ys = [float(point[1]) * back for point in box]
            xs = [float(point[0]) * back for point in box]
            if str(text).strip():
                lines.append(OcrLine(str(text).strip(), float(confidence), min(xs), min(ys), max(ys), max(xs)))
        return lines


def _middle(line: OcrLine) -> float:
    return (line.top + line.bottom) / 2


def _joined(left: str, right: str) -> str:
    if _CJK_END.search(left) and _CJK_START.search(right):
        return left + right
    return f"{left} {right}"


def _extended(paragraph: OcrParagraph, line: OcrLine) -> OcrParagraph:
    """``paragraph`` with ``line`` joined to its end, and where that line lies in the joined text."""
    text = _joined(paragraph.text, line.text)
    start = len(text) - len(line.text)
    return OcrParagraph(text, min(paragraph.confidence, line.confidence), (*paragraph.lines, (start, len(text), line)))


def paragraphs(lines: list[OcrLine]) -> list[OcrParagraph]:
    """The lines in reading order (top to bottom; a row of lines left to right), joined into paragraphs: a line
    continues the paragraph above when the gap between them is under half a line's height."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda line: line.top):
        if rows and abs(_middle(line) - _middle(rows[-1][0])) < 0.5 * max(line.height, rows[-1][0].height):
            rows[-1].append(line)  # beside the line before it: the same row
        else:
            rows.append([line])
    ordered = [line for row in rows for line in sorted(row, key=lambda line: line.left)]
    blocks: list[OcrParagraph] = []
    previous: OcrLine | None = None
    for line in ordered:
        if previous is not None and line.top - previous.bottom < 0.5 * max(line.height, previous.height):
            blocks[-1] = _extended(blocks[-1], line)
        else:
            blocks.append(OcrParagraph(line.text, line.confidence, ((0, len(line.text), line),)))
        previous = line
    return blocks

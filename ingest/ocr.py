"""Reading scans: text out of images (and out of PDF pages without a text layer) with an offline OCR engine.

The engine is RapidOCR on onnxruntime (``rapidocr-onnxruntime``, the ``ocr`` extra): PP-OCRv4 Chinese/English
detection and recognition models ship inside its wheel, so nothing is downloaded. It loads on first use.
:func:`paragraphs` puts the recognised lines in reading order and joins the lines of one paragraph (no space
between two Chinese characters, one between words).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["OCR_MISSING", "OcrEngine", "OcrLine", "paragraphs"]

OCR_MISSING = "a scan or image: install chinese-mixtral-rag[ocr] to read scans (pip install rapidocr-onnxruntime)"
#: Lines the recogniser is less sure of than this are kept (a wrong character beats a lost sentence) but counted.
LOW_CONFIDENCE = 0.6
#: The longest side a page is read at: a poster-sized scan is scaled down first, which bounds the time and memory
#: of one page (detection cost grows with the pixel count; 4,000 px keeps 8-pt text of an A3 page at 250 dpi).
MAX_SIDE = 4000
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

    @property
    def height(self) -> float:
        return max(1.0, self.bottom - self.top)


class OcrEngine:
    """RapidOCR, loaded on first use and shared by the loader threads (one recognition at a time: onnxruntime
    already uses every core for one page)."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

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
                self._engine = RapidOCR()

    def read(self, image: Image) -> list[OcrLine]:
        """The lines of ``image`` (any mode), in no particular order."""
        import numpy as np

        self.warm_up()
        if max(image.size) > MAX_SIDE:
            image = image.copy()
            image.thumbnail((MAX_SIDE, MAX_SIDE))
        pixels = np.asarray(image.convert("RGB"))
        with self._lock:
            result, _ = self._engine(pixels)
        lines = []
        for box, text, confidence in result or []:
            ys = [float(point[1]) for point in box]
            xs = [float(point[0]) for point in box]
            if str(text).strip():
                lines.append(OcrLine(str(text).strip(), float(confidence), min(xs), min(ys), max(ys)))
        return lines


def _middle(line: OcrLine) -> float:
    return (line.top + line.bottom) / 2


def _joined(left: str, right: str) -> str:
    if _CJK_END.search(left) and _CJK_START.search(right):
        return left + right
    return f"{left} {right}"


def paragraphs(lines: list[OcrLine]) -> list[str]:
    """The lines in reading order (top to bottom; a row of lines left to right), joined into paragraphs: a line
    continues the paragraph above when the gap between them is under half a line's height."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda line: line.top):
        if rows and abs(_middle(line) - _middle(rows[-1][0])) < 0.5 * max(line.height, rows[-1][0].height):
            rows[-1].append(line)  # beside the line before it: the same row
        else:
            rows.append([line])
    ordered = [line for row in rows for line in sorted(row, key=lambda line: line.left)]
    blocks: list[str] = []
    previous: OcrLine | None = None
    for line in ordered:
        if previous is not None and line.top - previous.bottom < 0.5 * max(line.height, previous.height):
            blocks[-1] = _joined(blocks[-1], line.text)
        else:
            blocks.append(line.text)
        previous = line
    return blocks

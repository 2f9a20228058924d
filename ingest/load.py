"""Turning one file into text elements: paragraphs, headings (with depth), tables, with page numbers.

PDFs go through pypdf page by page (fast, CJK fonts included, no layout model download); a page without a usable
text layer (a scan, or the mojibake of an unmapped CID font) is rendered alone with pypdfium2 and read by OCR
(:mod:`ingest.ocr`), so mixed documents work and memory stays flat whatever the page count. Images (png, jpg,
tiff with all its frames, bmp, webp) are read by OCR, a frame a page. Plain text is decoded here (UTF-8/16/32 with
or without BOM, GB18030/GBK, Big5, ...); every other format goes through unstructured.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ingest._offline import install_offline_nlp
from ingest.boxes import Span, TextBoxes, pdf_char_boxes
from ingest.ocr import OcrTimeout
from ingest.pdf_tables import layout_blocks, looks_tabular

if TYPE_CHECKING:
    from ingest.ocr import OcrEngine

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Element",
    "LoadError",
    "LoadedDocument",
    "PageProgress",
    "decode_text",
    "load_document",
]


class LoadError(Exception):
    """A file that cannot be turned into text; the message says why (shown next to the file name)."""


class PageProgress(Protocol):
    """Told after each page of a PDF (frame of an image) is read, for progress in pages on long files."""

    def __call__(self, page: int, pages: int, by_ocr: bool) -> None: ...


@dataclass(frozen=True)
class Element:
    text: str
    kind: str = "text"
    """'title', 'text', 'list' or 'table'."""
    heading: tuple[str, ...] = ()
    """The titles above this element, outermost first (a title's own path includes itself)."""
    page: int | None = None
    ocr_confidence: float | None = None
    """Read by OCR: the recogniser's lowest confidence among its lines (None: not from OCR)."""
    lines: tuple[tuple[int, int, float, float, float, float], ...] = ()
    """Read by OCR: where each line lies in :attr:`text` and on the page, (start, end, left, top, right,
    bottom) in page units (:class:`rag.chunks.PageBox`)."""


@dataclass
class LoadedDocument:
    elements: list[Element]
    format: str
    separator: str = "\n\n"
    offsets: list[int] = field(default_factory=list)
    """Start of each element in :attr:`text`."""
    text: str = ""
    """The extracted text: elements joined by ``separator``; chunk offsets point into it."""
    ocr_pages: list[int] = field(default_factory=list)
    """Pages (image frames) whose text came from OCR."""
    ocr_timeouts: list[int] = field(default_factory=list)
    """Pages (image frames) given up at the OCR time limit per page; they keep what their text layer had."""
    boxes: TextBoxes | None = None
    """Where the text lies on its pages (PDFs and images; None for formats without pages)."""

    def __post_init__(self) -> None:
        position = 0
        self.offsets = []
        for element in self.elements:
            self.offsets.append(position)
            position += len(element.text) + len(self.separator)
        self.text = self.separator.join(element.text for element in self.elements)


_PLAIN = {".txt", ".text", ".log"}
_MARKDOWN = {".md", ".markdown"}
_HTML = {".html", ".htm", ".xhtml"}
_UNSTRUCTURED = {
    ".docx",
    ".pptx",
    ".xlsx",
    ".csv",
    ".tsv",
    ".eml",
    ".epub",
    ".odt",
    ".rst",
    ".org",
    ".rtf",
    ".xml",
    ".json",
}
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    _PLAIN | _MARKDOWN | _HTML | _UNSTRUCTURED | {".pdf"} | IMAGE_EXTENSIONS
)
#: Office and EPUB files are zip containers: refused when their members would unpack to more than this (a zip
#: bomb of a few kilobytes unpacks to gigabytes inside the parser), or to more than ``MAX_UNPACK_RATIO`` times their
#: packed size past 50 MB.
MAX_UNPACKED_BYTES = 512 * 2**20
MAX_UNPACK_RATIO = 200
_ZIPPED = {".docx", ".pptx", ".xlsx", ".epub", ".odt"}
# Text formats that unstructured (or pandoc) parses leniently: random bytes must not become "text".
_TEXT_BASED = {".eml", ".rst", ".org", ".rtf", ".csv", ".tsv", ".json", ".xml"}
#: Resolution PDF pages are rendered at for OCR (PP-OCR reads 10-12 pt text well from here on).
OCR_DPI = 150
#: Pages of one file read by OCR at most (at ~0.5 s a page, an hour); the rest keep what their text layer has.
MAX_OCR_PAGES = 7200
# Characters of real text: CJK, letters, digits, common punctuation and spaces. A text layer mostly made of
# anything else is the mojibake of a CID font without a ToUnicode map, and is read by OCR instead.
_TEXTLIKE = re.compile(r"[\w\s\u3000-\u303f\uff00-\uffef.,;:!?'\"()\[\]{}<>/\\|@#$%&*+=~`^-]")

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def decode_text(data: bytes) -> str:
    """Decode text of an unknown encoding; raise :class:`LoadError` for binary content."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, errors="replace")
    if b"\x00" in data[:4096]:
        # UTF-16 without a BOM (NULs are common there: ASCII and line breaks), or binary
        best = max((_readable_as(data, codec) for codec in ("utf-16-le", "utf-16-be")), key=lambda r: r[0])
        if best[0] < 0.98:
            raise LoadError("binary content, not text")
        return best[1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        match = from_bytes(data, cp_isolation=["gb18030", "big5", "utf_8", "shift_jis", "euc_kr", "cp1252"]).best()
        if match is not None:
            text = str(match)
        else:
            mixed = _mixed_lines(data)  # files pasted together from UTF-8 and GBK sources
            if mixed is None:
                raise LoadError("binary content or an unknown text encoding") from None
            text = mixed
    if text and len(_CONTROL.findall(text[:20000])) > 0.01 * min(len(text), 20000):
        raise LoadError("binary content, not text")
    return text


def _mixed_lines(data: bytes) -> str | None:
    """Text whose lines are each UTF-8 or GB18030 (mostly UTF-8), decoded line by line; None when it is not."""
    lines = data.split(b"\n")
    decoded, utf8 = [], 0
    for line in lines:
        try:
            decoded.append(line.decode("utf-8"))
            utf8 += 1
        except UnicodeDecodeError:
            try:
                decoded.append(line.decode("gb18030"))
            except UnicodeDecodeError:
                return None
    return "\n".join(decoded) if utf8 * 2 >= len(lines) else None


def _readable_as(data: bytes, codec: str) -> tuple[float, str]:
    """Share of printable characters when ``data`` is decoded as ``codec`` (0 when it does not decode)."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return 0.0, ""
    sample = text[:20000]
    printable = sum(1 for ch in sample if ch.isprintable() or ch in "\n\r\t\f")
    # unassigned/private-use code points are what misread bytes turn into
    private = sum(1 for ch in sample if "\ue000" <= ch <= "\uf8ff")
    return (printable - private) / max(len(sample), 1), text


def load_document(
    path: str | os.PathLike[str],
    *,
    ocr: OcrEngine | None = None,
    max_ocr_pages: int = MAX_OCR_PAGES,
    on_page: PageProgress | None = None,
) -> LoadedDocument:
    """Extract the elements of one file. Raises :class:`LoadError` with a reason a user can act on.

    ``ocr``: the engine that reads images and PDF pages without text (None: OCR is off); ``max_ocr_pages``: pages
    of one PDF read by OCR at most; ``on_page``: told after each page of a PDF or frame of an image."""
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise LoadError(
            f"unsupported format '{extension or '(no extension)'}' "
            f"(supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
        )
    try:
        if extension == ".pdf":
            document = _load_pdf(path, ocr, max_ocr_pages, on_page)
        elif extension in IMAGE_EXTENSIONS:
            document = _load_image(path, ocr, on_page)
        elif extension in _PLAIN:
            document = LoadedDocument(_paragraphs(decode_text(path.read_bytes())), "text")
        else:
            if extension in _ZIPPED:
                _check_container(path, extension)
            elif extension in _TEXT_BASED:
                _check_text(path)
            document = _load_with_unstructured(path, extension)
    except LoadError:
        raise
    except ImportError as error:  # the OCR extra is missing
        raise LoadError(str(error)) from None
    except PermissionError:
        raise LoadError("permission denied: the file cannot be read") from None
    except OSError as error:
        raise LoadError(f"cannot be read ({error.strerror or error})") from None
    except Exception as error:  # third-party parsers raise anything on a corrupt file
        raise LoadError(f"cannot be parsed as {extension[1:].upper()} ({type(error).__name__}: {error})") from None
    if not any(element.text.strip() for element in document.elements):
        if document.ocr_timeouts:
            raise LoadError(
                f"no text: OCR gave up at its time limit per page (page {_pages(document.ocr_timeouts)}); "
                "raise RAG_OCR_PAGE_TIME_LIMIT_S to read it"
            )
        if ocr is None:
            raise LoadError("no text could be extracted (empty, or only images/scans, and OCR is off: --no-ocr)")
        raise LoadError("no text could be extracted (empty, or a scan in which OCR found no text)")
    return document


def _check_text(path: Path) -> None:
    """Refuse binary content in a text format, from its first 64 KiB (whole lines), before a lenient parser reads
    it as text."""
    with path.open("rb") as handle:
        head = handle.read(65536)
        if handle.read(1):
            head = head[: head.rfind(b"\n") + 1] or head
    decode_text(head)


def _check_container(path: Path, extension: str) -> None:
    """Refuse a zip container that would unpack to too much, before any parser opens it (bounded memory)."""
    import zipfile

    kind = extension[1:].upper()
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise LoadError(f"not a valid {kind} file (damaged, cut short, or another format renamed)") from None
    unpacked = sum(member.file_size for member in members)
    packed = sum(member.compress_size for member in members)
    if unpacked > MAX_UNPACKED_BYTES or (unpacked > 50 * 2**20 and unpacked > MAX_UNPACK_RATIO * max(packed, 1)):
        raise LoadError(
            f"its contents would unpack to {unpacked / 2**20:,.0f} MB from {packed / 2**20:,.1f} MB "
            f"(limit {MAX_UNPACKED_BYTES / 2**20:,.0f} MB, {MAX_UNPACK_RATIO}x): a zip bomb or a damaged {kind}; "
            "refused"
        )


def _paragraphs(text: str, page: int | None = None) -> list[Element]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [Element(block.strip(), page=page) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _load_pdf(
    path: Path, ocr: OcrEngine | None, max_ocr_pages: int = MAX_OCR_PAGES, on_page: PageProgress | None = None
) -> LoadedDocument:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # our LoadError carries the reason
    from pypdf.errors import PdfReadError

    try:
        with _relaxed_pdf_limits():
            reader = PdfReader(path)
            if reader.is_encrypted and not reader.decrypt(""):
                raise LoadError("encrypted PDF: remove the password first")
            elements: list[Element] = []
            scanned: list[int] = []
            timeouts: list[int] = []
            pages = len(reader.pages)
            for number, page in enumerate(reader.pages, start=1):
                text = _parsed_once(page).extract_text() or ""
                found: list[Element] = []
                if not (_usable_text(text) or ocr is None or len(scanned) >= max_ocr_pages):
                    try:
                        found = _read_page(ocr, _render_page(path, number), number)
                    except OcrTimeout:
                        timeouts.append(number)
                if found:
                    scanned.append(number)
                    elements.extend(found)
                else:  # a text page, or OCR found nothing (or gave up): keep what the text layer has
                    elements.extend(_text_page(page, text, number))
                if on_page is not None:
                    on_page(number, pages, bool(found))
    except PdfReadError as error:
        raise LoadError(f"corrupt or unreadable PDF ({error})") from None
    document = LoadedDocument(elements, "pdf", ocr_pages=scanned, ocr_timeouts=timeouts)
    document.boxes = _pdf_boxes(path, document)
    return document


def _pdf_boxes(path: Path, document: LoadedDocument) -> TextBoxes | None:
    """Where the text of each page lies: its characters' boxes from pdfium on text pages, the OCR lines' on
    scanned pages (read at :data:`OCR_DPI`, kept in points). A page whose boxes cannot be read just has none."""
    text_pages: dict[int, list[tuple[int, int]]] = {}
    scanned = set(document.ocr_pages)
    for element, offset in zip(document.elements, document.offsets, strict=True):
        if element.page is not None and element.page not in scanned:
            text_pages.setdefault(element.page, []).append((offset, offset + len(element.text)))
    try:
        characters = pdf_char_boxes(path, document.text, text_pages) if text_pages else TextBoxes.empty()
    except Exception:  # a page pdfium cannot read costs its highlights, never the document
        characters = TextBoxes.empty()
    return TextBoxes.joined([characters, _ocr_boxes(document, 72 / OCR_DPI)])


def _ocr_boxes(document: LoadedDocument, scale: float) -> TextBoxes:
    """The OCR lines of ``document`` as boxes, pixels times ``scale``."""
    spans: list[Span] = []
    for element, offset in zip(document.elements, document.offsets, strict=True):
        for start, end, left, top, right, bottom in element.lines:
            edges = (left * scale, top * scale, right * scale, bottom * scale)
            spans.append((offset + start, offset + end, element.page or 1, *edges))
    return TextBoxes.from_spans(spans)


def _text_page(page: Any, text: str, number: int) -> list[Element]:
    """A page's text layer as elements: its tables (found in pypdf's layout text, read again only for pages that
    look tabular) with their column headers, the rest as paragraphs."""
    if not (_usable_text(text) and looks_tabular(text)):
        return _paragraphs(text, page=number)
    try:
        blocks = layout_blocks(_layout_text(page))
    except Exception:  # pypdf's layout mode failing on a page costs its tables, not the page
        return _paragraphs(text, page=number)
    if not any(kind == "table" for kind, _ in blocks):
        return _paragraphs(text, page=number)
    return [Element(block, kind=kind, page=number) for kind, block in blocks]


def _parsed_once(page: Any) -> Any:
    """``page`` with its content stream parsed once for both reads: plain extraction takes a ``ContentStream`` it is
    handed as it is, so the layout pass (:func:`_layout_text`) reuses the parsed operations (about 60 % of its time
    measured on SEC 10-Q pages) instead of parsing the page again."""
    from pypdf.generic import ContentStream, NameObject

    try:
        contents = page["/Contents"].get_object()
        if not isinstance(contents, ContentStream):
            page[NameObject("/Contents")] = ContentStream(contents, page.pdf, "bytes")
    except Exception:  # no contents (an empty page) or an odd one: pypdf's own path decides
        pass
    return page


def _layout_text(page: Any) -> str:
    """pypdf's layout-mode text of ``page`` from its already parsed operations: the steps of
    ``PageObject._layout_mode_text`` (pypdf 7.1, pinned) with its defaults; pypdf's public call where they differ."""
    try:
        from pypdf._text_extraction import _layout_mode
        from pypdf.generic import ContentStream

        contents = page["/Contents"].get_object()
        if not isinstance(contents, ContentStream):
            raise TypeError("not parsed")
        fonts = page._layout_mode_fonts()
        groups = _layout_mode.text_show_operations(iter(contents.operations), fonts, True, None)
    except (AttributeError, ImportError, KeyError, TypeError):
        return page.extract_text(extraction_mode="layout") or ""
    if not groups:
        return ""
    lines = _layout_mode.y_coordinate_groups(groups, None)
    width = _layout_mode.fixed_char_width(groups, 1.25)
    return str(_layout_mode.fixed_width_page(lines, width, True, 1))


def _usable_text(text: str) -> bool:
    """Whether a page's text layer is real text: enough characters, nearly all of them text-like, and (almost) no
    control characters. A font subset without a ToUnicode map extracts as glyph numbers: mostly printable ASCII
    with control characters between (measured: none on 314 pages of SEC filings, 9 % on such a page)."""
    visible = "".join(text.split())
    if len(visible) < 8:
        return False
    if len(_CONTROL.findall(text)) > 0.01 * len(visible):
        return False
    return sum(1 for char in visible if _TEXTLIKE.match(char)) >= 0.8 * len(visible)


def _render_page(path: Path, number: int) -> Any:
    """Page ``number`` as an image, its bitmap the only one alive. The document is opened anew for every page:
    pdfium keeps what it parsed of an open document, which grew peak RSS by 27 MiB over 200 pages where
    reopening stays flat (+2 MiB) at the same 0.47 s a page."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    try:
        page = document[number - 1]
        try:
            return page.render(scale=OCR_DPI / 72).to_pil()
        finally:
            page.close()
    finally:
        document.close()


def _read_page(ocr: OcrEngine, image: Any, page: int) -> list[Element]:
    """The paragraphs OCR finds on one page (or image frame)."""
    from ingest.ocr import paragraphs

    return [
        Element(
            block.text,
            page=page,
            ocr_confidence=block.confidence,
            lines=tuple((start, end, line.left, line.top, line.right, line.bottom) for start, end, line in block.lines),
        )
        for block in paragraphs(ocr.read(image))
    ]


def _load_image(path: Path, ocr: OcrEngine | None, on_page: PageProgress | None = None) -> LoadedDocument:
    if ocr is None:
        raise LoadError("an image: OCR is off (--no-ocr); run without it to read scans")
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            elements: list[Element] = []
            frames: list[int] = []
            timeouts: list[int] = []
            count = int(getattr(image, "n_frames", 1))
            for index, frame in enumerate(ImageSequence.Iterator(image), start=1):
                try:
                    found = _read_page(ocr, frame, index)
                except OcrTimeout:
                    found = []
                    timeouts.append(index)
                if found:
                    frames.append(index)
                    elements.extend(found)
                if on_page is not None:
                    on_page(index, count, bool(found))
    except (UnidentifiedImageError, OSError) as error:
        raise LoadError(f"not a readable image ({type(error).__name__}: {error})") from None
    document = LoadedDocument(elements, "image", ocr_pages=frames, ocr_timeouts=timeouts)
    document.boxes = _ocr_boxes(document, 1.0)
    return document


def _pages(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def _relaxed_pdf_limits() -> AbstractContextManager[Any]:
    """pypdf's default limit (100,000 array elements) rejects real filings such as 10-Qs with big tables."""
    try:
        from pypdf import apply_configuration
    except ImportError:  # older pypdf: no configurable limits
        return nullcontext()
    return apply_configuration(array_maximum_element_count=10_000_000)


def _load_with_unstructured(path: Path, extension: str) -> LoadedDocument:
    install_offline_nlp()
    if extension in _MARKDOWN:
        from unstructured.partition.md import partition_md

        raw = partition_md(text=decode_text(path.read_bytes()))
    elif extension in _HTML:
        from unstructured.partition.html import partition_html

        raw = partition_html(text=decode_text(path.read_bytes()))
    else:
        from unstructured.partition.auto import partition

        raw = partition(filename=str(path))
    return LoadedDocument(_from_unstructured(raw), extension[1:])


def _from_unstructured(raw: list[Any]) -> list[Element]:
    elements: list[Element] = []
    headings: list[tuple[int, str]] = []  # (depth, title) stack
    for item in raw:
        category = getattr(item, "category", "")
        metadata = item.metadata
        page = getattr(metadata, "page_number", None)
        if category == "Table":
            text = _table_text(getattr(metadata, "text_as_html", None)) or item.text
            kind = "table"
        else:
            text = item.text
            kind = {"Title": "title", "ListItem": "list"}.get(category, "text")
        text = (text or "").strip()
        if not text or category in {"PageBreak", "Header", "Footer", "PageNumber", "Image"}:
            continue
        if kind == "title":
            depth = getattr(metadata, "category_depth", None) or 0
            while headings and headings[-1][0] >= depth:
                headings.pop()
            headings.append((depth, text))
        path = tuple(title for _, title in headings)
        sheet = getattr(metadata, "page_name", None)  # a spreadsheet's sheet: its name heads its table
        if sheet and not path:
            path = (str(sheet),)
        elements.append(Element(text, kind, path, page))
    return elements


def _table_text(html: str | None) -> str | None:
    """One line per row, cells separated by ' | ': keeps the row structure that unstructured's text drops."""
    if not html:
        return None
    import lxml.html

    try:
        table = lxml.html.fromstring(html)
    except Exception:
        return None
    rows = []
    for row in table.iter("tr"):
        cells = [" ".join(cell.text_content().split()) for cell in row if cell.tag in {"td", "th"}]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows) or None

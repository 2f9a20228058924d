"""Page views: a cited page as an image with the passage highlighted, or, for a document without pages, the
passage in its surrounding text. What the browser UI shows when a source is opened and what ``GET
/v1/documents/{id}/pages/{n}`` and ``/passages/{chunk_id}`` send.

>>> views = components.page_views()
>>> image = views.page_image(doc_id, 3, [chunk_id], collections=["docs"])   # PNG bytes, page 3 of image.pages
>>> html = views.passage_html(doc_id, chunk_id, collections=["docs"])        # a Markdown file's passage in context

Documents are named by id (:func:`rag.chunks.document_id`) and looked up among the collections the caller may
read, so only files that are documents of those collections are ever opened. A PDF page is rendered with pypdfium2
at :attr:`PageViews.width` pixels, the chunks' rectangles (kept at ingest, :class:`rag.chunks.PageBox`) drawn over
it with Pillow; images are shown frame by frame the same way. Rendered PNGs are kept under ``data_dir/page-cache``,
named by what they show (file, its size and time, page, width, rectangles), the least recently used removed once
the folder outgrows its bound. A store built before boxes existed still opens its pages, without highlights.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag.chunks import BOXES_KEY, ChunkReader, ContextChunk, PageBox, decode_boxes, document_id
from rag.errors import DocumentNotFoundError, NotFoundError, RequestError

__all__ = ["DocumentPages", "FoundChunk", "PageImage", "PageViews", "PassageView", "view_path"]

_IMAGES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
#: Highlight colours: a translucent yellow fill and an orange outline (RGBA).
_FILL = (255, 214, 0, 96)
_OUTLINE = (230, 110, 0, 255)
#: Characters of the document shown around a passage in a passage view, either side.
CONTEXT_CHARS = 1500


@dataclass(frozen=True)
class DocumentPages:
    """A document as page views see it."""

    doc_id: str
    collection: str
    path: str
    file_name: str
    kind: Literal["pdf", "image", "text"]
    pages: int
    """Pages (an image's frames); 0 for a document without pages (shown as a passage view)."""


@dataclass(frozen=True)
class PageImage:
    """One page as a PNG with the passage's rectangles drawn."""

    png: bytes
    page: int
    pages: int
    width: int
    height: int
    highlighted: tuple[PageBox, ...]
    """The rectangles drawn, in page units."""
    scale: float
    """Image pixels per page unit (a box's pixels are its edges times this)."""


@dataclass(frozen=True)
class PassageView:
    """A passage of a document without pages, in its surrounding text."""

    html: str
    """An HTML fragment: the text around the passage, escaped, the passage in ``<mark id="rag-passage">``."""
    file_name: str
    heading: str


class PageViews:
    """Renders page views of the documents of the collections a caller may read.

    ``reader_for``: a collection's chunk reader (its local index): which files it holds, their chunks and boxes;
    ``cache_dir``: where rendered pages are kept, at most ``cache_bytes`` (0: nothing kept); ``width``: the width
    of a rendered page in pixels."""

    def __init__(
        self,
        reader_for: Callable[[str], ChunkReader],
        *,
        cache_dir: Path,
        cache_bytes: int,
        width: int = 1000,
    ) -> None:
        self.reader_for = reader_for
        self.cache_dir = cache_dir
        self.cache_bytes = cache_bytes
        self.width = width
        self._cache_lock = threading.Lock()
        self._cache_used: int | None = None  # bytes under cache_dir, counted at the first write

    # -- documents -----------------------------------------------------------------------------------------
    def document(self, doc_id: str, collections: Iterable[str]) -> DocumentPages:
        """The document ``doc_id`` among ``collections`` (the caller's readable ones, as
        :meth:`rag.app.library.DocumentLibrary.find_document` looks it up); :class:`DocumentNotFoundError` when none
        of them holds it, :class:`NotFoundError` when its file is gone."""
        found = next(
            (
                (name, path)
                for name in collections
                for path in self.reader_for(name).sources()
                if document_id(path) == doc_id
            ),
            None,
        )
        if found is None:
            raise DocumentNotFoundError(
                f"no document '{doc_id}': it may have been deleted; list them with GET /v1/documents"
            )
        collection, path = found
        extension = Path(path).suffix.lower()
        kind: Literal["pdf", "image", "text"] = (
            "pdf" if extension == ".pdf" else "image" if extension in _IMAGES else "text"
        )
        pages = 0
        if kind != "text":
            if not os.path.isfile(path):
                raise NotFoundError(
                    f"{os.path.basename(path)} is no longer on disk: put it back, or ingest again to drop it",
                    param="id",
                )
            pages = _page_count(path, kind)
        return DocumentPages(doc_id, collection, path, os.path.basename(path), kind, pages)

    def chunk(self, document: DocumentPages, chunk_id: str, *, param: str = "chunk_id") -> tuple[ContextChunk, str]:
        """A chunk of ``document`` and its boxes' JSON; :class:`RequestError` (naming ``param``) for an id that is
        not one of its chunks."""
        found = self.reader_for(document.collection).chunks([chunk_id]).get(chunk_id)
        if found is None or str(found[1].get("source_abs") or "") != document.path:
            raise RequestError(
                f"{param}: '{chunk_id}' is not a chunk of {document.file_name} (take chunk ids from its sources)",
                param=param,
            )
        text, metadata = found
        return ContextChunk.from_store(chunk_id, text, metadata), str(metadata.get(BOXES_KEY) or "")

    def first_page(self, doc_id: str, chunk_ids: Sequence[str], collections: Iterable[str]) -> int:
        """The first page the chunks lie on (their boxes', else their recorded page; 1 when none is known)."""
        document = self.document(doc_id, collections)
        pages: list[int] = []
        for chunk_id in chunk_ids:
            chunk, boxes = self.chunk(document, chunk_id, param="highlight")
            pages.extend(box.page for box in decode_boxes(boxes))
            if chunk.page is not None:
                pages.append(chunk.page)
        return min(pages, default=1)

    # -- page images ---------------------------------------------------------------------------------------
    def page_image(self, doc_id: str, page: int, highlight: Sequence[str], collections: Iterable[str]) -> PageImage:
        """Page ``page`` (1-based) of a PDF or image document as a PNG, the rectangles of the chunks ``highlight``
        that lie on it drawn over it. :class:`RequestError` naming ``page`` or ``highlight`` for a page out of range
        or a chunk id of another document; :class:`NotFoundError` for an unknown document."""
        document = self.document(doc_id, collections)
        if document.kind == "text":
            raise RequestError(
                f"page: {document.file_name} has no pages; open a passage of it with "
                f"GET /v1/documents/{doc_id}/passages/{{chunk_id}}",
                param="page",
            )
        if not 1 <= page <= document.pages:
            raise RequestError(f"page: {page} is not a page of {document.file_name} (1 to {document.pages})",
                               param="page")  # fmt: skip
        boxes = tuple(
            box
            for chunk_id in dict.fromkeys(highlight)
            for box in decode_boxes(self.chunk(document, chunk_id, param="highlight")[1])
            if box.page == page
        )
        key = self._cache_key(document, page, boxes)
        cached = self._cached(key)
        rendered = _render(document, page, self.width) if cached is None else None
        if rendered is not None:
            image, scale = rendered
            png = _png(_highlighted(image, boxes, scale))
            self._keep(key, png)
            return PageImage(png, page, document.pages, image.width, image.height, boxes, scale)
        assert cached is not None
        width, height, scale = _png_size(cached, document, page, self.width)
        return PageImage(cached, page, document.pages, width, height, boxes, scale)

    # -- passages of documents without pages ---------------------------------------------------------------
    def passage_html(self, doc_id: str, chunk_id: str, collections: Iterable[str]) -> PassageView:
        """The passage ``chunk_id`` in the text around it (:data:`CONTEXT_CHARS` either side, from the file's
        chunks in the local index, their overlaps read once), marked and escaped: an HTML fragment."""
        document = self.document(doc_id, collections)
        target, _ = self.chunk(document, chunk_id)
        chunks = sorted(
            self.reader_for(document.collection).chunks_of_files([document.path]), key=lambda c: (c.start, c.end)
        )
        low, high = target.start - CONTEXT_CHARS, target.end + CONTEXT_CHARS
        parts: list[str] = []
        cursor = low
        heading = None
        for chunk in chunks:
            if chunk.end <= cursor or chunk.start >= high:
                continue
            begin = max(chunk.start, cursor)
            if chunk.heading and chunk.heading != heading:  # a new section: its heading path, as a line
                parts.append(f'<div class="rag-heading"><b>{html.escape(chunk.heading)}</b></div>')
            elif begin > cursor and parts:
                parts.append("\n\n")  # a gap between chunks: a separator the chunks leave out
            heading = chunk.heading
            parts.append(_marked(chunk.text[begin - chunk.start :], begin, target.start, target.end))
            cursor = chunk.end
        body = "".join(parts)
        fragment = f'<div class="rag-passage-view" style="white-space: pre-wrap; line-height: 1.5">{body}</div>'
        return PassageView(fragment, document.file_name, target.heading)

    # -- the cache -----------------------------------------------------------------------------------------
    def _cache_key(self, document: DocumentPages, page: int, boxes: tuple[PageBox, ...]) -> str:
        stat = os.stat(document.path)
        raw = f"{document.path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{page}\0{self.width}\0{boxes!r}"
        return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.png"

    def _cached(self, key: str) -> bytes | None:
        if self.cache_bytes <= 0:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: kept longest
        except OSError:
            return None
        return data

    def _keep(self, key: str, png: bytes) -> None:
        """Write ``png`` into the cache (atomically: other workers read the same folder), then trim the cache to its
        bound. A cache that cannot be written costs speed, never the page."""
        if self.cache_bytes <= 0 or len(png) > self.cache_bytes:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            partial.write_bytes(png)
            os.replace(partial, path)
        except OSError:
            return
        with self._cache_lock:
            if self._cache_used is None:
                self._cache_used = sum(size for _, size, _ in _cache_files(self.cache_dir))
            else:
                self._cache_used += len(png)
            if self._cache_used > self.cache_bytes:
                self._cache_used = _trim(self.cache_dir, int(self.cache_bytes * 0.8))


def _cache_files(folder: Path) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every cached page."""
    found = []
    for path in folder.glob("*/*.png"):
        try:
            stat = path.stat()
        except OSError:  # removed by another worker meanwhile
            continue
        found.append((stat.st_mtime, stat.st_size, path))
    return found


def _trim(folder: Path, target: int) -> int:
    """Remove the least recently used pages until at most ``target`` bytes are left; returns the bytes left."""
    files = sorted(_cache_files(folder))
    used = sum(size for _, size, _ in files)
    for _, size, path in files:
        if used <= target:
            break
        try:
            path.unlink()
        except OSError:
            continue
        used -= size
    return used


def _page_count(path: str, kind: str) -> int:
    if kind == "pdf":
        import pypdfium2

        document = pypdfium2.PdfDocument(path)
        try:
            return len(document)
        finally:
            document.close()
    from PIL import Image

    with Image.open(path) as image:
        return int(getattr(image, "n_frames", 1))


def _render(document: DocumentPages, page: int, width: int) -> tuple[Any, float]:
    """Page ``page`` as an RGB image ``width`` pixels wide, and the pixels per page unit."""
    if document.kind == "pdf":
        import pypdfium2

        pdf = pypdfium2.PdfDocument(document.path)
        try:
            handle = pdf[page - 1]
            try:
                scale = width / handle.get_width()
                return handle.render(scale=scale).to_pil().convert("RGB"), scale
            finally:
                handle.close()
        finally:
            pdf.close()
    from PIL import Image

    with Image.open(document.path) as image:
        image.seek(page - 1)
        frame = image.convert("RGB")
    scale = width / frame.width
    return frame.resize((width, max(1, round(frame.height * scale)))), scale


def _highlighted(image: Any, boxes: Iterable[PageBox], scale: float) -> Any:
    """``image`` with ``boxes`` (page units) drawn: a translucent fill and an outline, a little larger than the
    text so the outline does not cross it."""
    boxes = list(boxes)
    if not boxes:
        return image
    from PIL import Image, ImageDraw

    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pad = max(1.0, 1.5 * scale)
    for box in boxes:
        draw.rectangle(
            (box.left * scale - pad, box.top * scale - pad, box.right * scale + pad, box.bottom * scale + pad),
            fill=_FILL,
            outline=_OUTLINE,
            width=max(1, round(scale)),
        )
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)  # level 3: a fifth of the default level's time, 10 % larger
    return out.getvalue()


def _png_size(png: bytes, document: DocumentPages, page: int, width: int) -> tuple[int, int, float]:
    """Width, height and scale of a cached page (its PNG header; the scale from the page's width)."""
    pixel_width = int.from_bytes(png[16:20], "big")
    pixel_height = int.from_bytes(png[20:24], "big")
    if document.kind == "pdf":
        import pypdfium2

        pdf = pypdfium2.PdfDocument(document.path)
        try:
            handle = pdf[page - 1]
            page_width = handle.get_width()
            handle.close()
        finally:
            pdf.close()
        return pixel_width, pixel_height, width / page_width
    from PIL import Image

    with Image.open(document.path) as image:
        return pixel_width, pixel_height, width / image.width


def _marked(text: str, start: int, mark_start: int, mark_end: int) -> str:
    """``text`` (starting at offset ``start``) escaped, the part inside ``[mark_start, mark_end)`` in a mark."""
    end = start + len(text)
    if end <= mark_start or start >= mark_end:
        return html.escape(text)
    left = max(mark_start, start) - start
    right = min(mark_end, end) - start
    opening = '<mark id="rag-passage">' if start <= mark_start else "<mark>"
    return f"{html.escape(text[:left])}{opening}{html.escape(text[left:right])}</mark>{html.escape(text[right:])}"


def view_path(doc_id: str, file_name: str, page: int | None, chunk_ids: Sequence[str]) -> str:
    """The URL path of a passage's page view: its page as a PNG with its chunks highlighted (PDFs and images), or
    the passage in its surrounding text (documents without pages). Ids only, never a path."""
    from urllib.parse import quote

    if Path(file_name).suffix.lower() in _IMAGES | {".pdf"}:
        highlight = quote(",".join(chunk_ids), safe=",")
        return f"/v1/documents/{doc_id}/pages/{page or 1}" + (f"?highlight={highlight}" if chunk_ids else "")
    return f"/v1/documents/{doc_id}/passages/{quote(chunk_ids[0] if chunk_ids else '', safe='')}"


@dataclass(frozen=True)
class FoundChunk:
    """A retrieved chunk as the surfaces show it (``/v1/chunks``, MCP's ``search``): ids, never a path, and the
    path of its page view. Built in one place from retrieval's LangChain ``Document``."""

    id: str
    document_id: str
    file_name: str
    source: str
    page: int | None
    heading: str
    score: float | None
    text: str

    @classmethod
    def from_document(cls, document: Any) -> FoundChunk:
        metadata = document.metadata
        return cls(
            id=str(document.id or metadata.get("chunk_id") or ""),
            document_id=document_id(str(metadata.get("source_abs") or "")),
            file_name=str(metadata.get("file_name") or ""),
            source=str(metadata.get("source") or ""),
            page=metadata.get("page"),
            heading=str(metadata.get("heading") or ""),
            score=metadata.get("score"),
            text=document.page_content,
        )

    @property
    def view_path(self) -> str:
        """Its page view (:func:`view_path`), this chunk highlighted."""
        return view_path(self.document_id, self.file_name, self.page, [self.id])

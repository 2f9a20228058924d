"""What the UI's events do, as plain functions of their inputs (testable without a browser or Gradio).

Every handler takes the session's :class:`SessionSettings` (kept in ``gr.State``, one per browser session) and
returns new values; nothing about one user is stored on the shared objects. Library errors become messages here,
at the edge, in the session's language.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rag.app.assistant import AnswerStats, AskOptions, Assistant, Note
from rag.app.library import DocumentLibrary, document_id
from rag.app.uploads import UploadResult
from rag.errors import ModelNotFoundError, RagError
from ui.answer_text import inert_links, linked_markers
from ui.i18n import Language, has_text, language_from_header, text

__all__ = ["ChatTurn", "DocumentsView", "PageView", "PageViewShown", "SessionSettings", "UiHandlers"]

logger = logging.getLogger("ui")

#: (role, text) turns the model sees as the conversation.
ChatTurn = tuple[str, str]
#: Reports a fraction done (0..1) and what is being done.
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class SessionSettings:
    """One browser session's choices (``gr.State``): never shared between sessions."""

    collection: str
    k: int = 5
    context_budget: int = 0
    """Most tokens of evidence; 0: as many as the window allows."""
    temperature: float = 0.2
    retrieval_only: bool = False
    language: Language = "en"


@dataclass(frozen=True)
class DocumentsView:
    """What the Documents tab shows for a session's collection."""

    collections: list[list[Any]]
    documents: list[list[Any]]
    document_choices: list[tuple[str, str]]
    """(label, path) for the delete dropdown."""
    folder_choices: list[str]
    collection_names: list[str]


@dataclass(frozen=True)
class PageView:
    """The source page a session is looking at (``gr.State``): which document, page and highlighted chunks."""

    n: int
    doc_id: str
    collection: str
    file_name: str
    page: int
    pages: int
    """0: a document without pages (its passage is shown in its text)."""
    chunk_ids: tuple[str, ...]


@dataclass(frozen=True)
class PageViewShown:
    """What the page view shows: the view (None: nothing open), the page image (PIL, or None), the passage HTML of a
    document without pages, and its caption ("[2] manual.pdf · page 3 of 12")."""

    view: PageView | None
    image: Any
    passage_html: str
    caption: str


class UiHandlers:
    """The UI's behaviour over one :class:`Assistant` and one :class:`DocumentLibrary` shared by all sessions.

    ``max_tokens``: most tokens per answer (default: the model's setting).
    """

    def __init__(self, assistant: Assistant, library: DocumentLibrary, *, max_tokens: int | None = None) -> None:
        self.assistant = assistant
        self.library = library
        self.max_tokens = max_tokens

    def new_session(self, accept_language: str | None = None) -> SessionSettings:
        settings = self.assistant.settings
        return SessionSettings(
            collection=settings.collection,
            temperature=settings.llm_temperature,
            retrieval_only=not self.assistant.use_llm,
            language=language_from_header(accept_language),
        )

    def banner(self, language: str) -> str:
        if not self.assistant.use_llm:
            return text(language, "banner_no_model")
        return text(language, "banner_model", model=self.assistant.settings.llm_model)

    # -- settings ------------------------------------------------------------------------------------------
    def apply_settings(
        self,
        session: SessionSettings,
        collection: str | None,
        k: float,
        context_budget: float | None,
        temperature: float,
        retrieval_only: bool,
    ) -> SessionSettings:
        budget = int(context_budget or 0)
        return replace(
            session,
            collection=(collection or session.collection).strip(),
            k=max(1, int(k)),
            context_budget=budget if budget >= 256 else 0,  # below 256 is not a useful budget: automatic
            temperature=float(temperature),
            retrieval_only=bool(retrieval_only) or not self.assistant.use_llm,
        )

    def set_language(self, session: SessionSettings, language: str) -> SessionSettings:
        return replace(session, language="zh" if language == "zh" else "en")

    # -- chat ----------------------------------------------------------------------------------------------
    def respond(
        self, message: str, history: Sequence[ChatTurn], session: SessionSettings
    ) -> Generator[tuple[list[dict[str, str]], list[ChatTurn], str, str], None, None]:
        """Stream an answer: yields (chat messages to show, the conversation for the model, sources HTML, figures).

        The conversation gains the turn only when an answer was written (not in retrieval-only mode, not on error).
        """
        with contextlib.closing(self.respond_with_sources(message, history, session)) as events:
            for shown, kept, sources_html, figures, _ in events:
                yield shown, kept, sources_html, figures

    def respond_with_sources(
        self, message: str, history: Sequence[ChatTurn], session: SessionSettings
    ) -> Generator[tuple[list[dict[str, str]], list[ChatTurn], str, str, list[dict[str, Any]]], None, None]:
        """:meth:`respond`, each step also with the sources shown, as the page view opens them (``[n]``, document
        id, page, chunk ids): kept in the session's ``gr.State``."""
        language = session.language
        shown = _as_messages(history)
        question = (message or "").strip()
        if not question:
            yield list(shown), list(history), "", "", []
            return
        shown.append({"role": "user", "content": question})
        shown.append({"role": "assistant", "content": "…"})
        yield list(shown), list(history), "", "", []
        openable: list[dict[str, Any]] = []
        options = AskOptions(
            collection=session.collection,
            k=session.k,
            max_context_tokens=session.context_budget or None,
            temperature=session.temperature,
            max_tokens=self.max_tokens,
            retrieval_only=session.retrieval_only,
        )
        answer, sources_html, figures = "", "", ""
        # closing(): a stop (this generator closed) closes the model's stream at once and frees the model
        with contextlib.closing(self.assistant.ask(question, history, options)) as events:
            try:
                for event in events:
                    if event.sources:
                        openable = _openable(event, session.collection)
                    if event.kind == "passages":
                        sources_html = render_sources(event.sources, language, final=False)
                        figures = with_notes(render_figures(event.stats, language, final=False), event.notes, language)
                    elif event.kind == "reading":  # the model reads the prompt: not a frozen screen
                        figures = with_notes(render_reading(event.stats, language), event.notes, language)
                    elif event.kind == "delta":
                        answer += event.text
                        shown[-1] = {"role": "assistant", "content": inert_links(answer)}
                    elif event.retrieval_only:
                        count = len(event.sources)
                        shown[-1] = {
                            "role": "assistant",
                            "content": text(language, "retrieval_only_answer", count=count),
                        }
                        yield (
                            list(shown),
                            list(history),
                            render_sources(event.sources, language, final=False, retrieval_only=True),
                            with_notes(render_figures(event.stats, language), event.notes, language),
                            openable,
                        )
                        return
                    else:
                        numbers = {int(source.get("n") or 0) for source in event.sources}
                        shown[-1] = {"role": "assistant", "content": linked_markers(inert_links(event.text), numbers)}
                        kept = [*history, ("user", question), ("assistant", event.text)]
                        yield (
                            shown,
                            kept,
                            render_sources(event.sources, language, final=True),
                            with_notes(render_figures(event.stats, language), event.notes, language),
                            openable,
                        )
                        return
                    yield list(shown), list(history), sources_html, figures, openable
            except RagError as error:
                message_text = text(language, "error", message=str(error))
                if isinstance(error, ModelNotFoundError):
                    message_text += "\n\n" + text(language, "model_hint")
                shown[-1] = {"role": "assistant", "content": message_text}
                yield list(shown), list(history), sources_html, figures, openable

    # -- page views ----------------------------------------------------------------------------------------
    def open_source(self, n: int, openable: Sequence[dict[str, Any]], session: SessionSettings) -> PageViewShown:
        """The page view of source ``[n]`` of the answer shown: its page with the passage highlighted, or (a
        document without pages) the passage in its text."""
        source = next((item for item in openable if int(item.get("n") or 0) == n), None)
        if source is None:
            return PageViewShown(None, None, "", "")
        views = self.library.components.page_views()
        collection = str(source["collection"])
        try:
            document = views.document(str(source["doc_id"]), [collection])
        except RagError as error:
            return PageViewShown(None, None, "", text(session.language, "error", message=str(error)))
        chunk_ids = tuple(str(chunk_id) for chunk_id in source.get("chunk_ids") or ())
        view = PageView(n, document.doc_id, collection, document.file_name, 0, document.pages, chunk_ids)
        if document.pages:
            page = source.get("page")
            if not isinstance(page, int) or not 1 <= page <= document.pages:
                page = views.first_page(document.doc_id, chunk_ids, [collection]) if chunk_ids else 1
            view = replace(view, page=page)
        return self.show_page(view, 0, session)

    def show_page(self, view: PageView | None, step: int, session: SessionSettings) -> PageViewShown:
        """The view moved ``step`` pages (0: as it is), kept within the document; unchanged without a view."""
        if view is None:
            return PageViewShown(None, None, "", "")
        language = session.language
        views = self.library.components.page_views()
        try:
            if not view.pages:
                passage = views.passage_html(
                    view.doc_id, view.chunk_ids[0] if view.chunk_ids else "", [view.collection]
                )
                caption = text(language, "passage_in_text", n=view.n, file=view.file_name)
                return PageViewShown(view, None, passage.html, caption)
            view = replace(view, page=min(max(1, view.page + step), view.pages))
            image = views.page_image(view.doc_id, view.page, view.chunk_ids, [view.collection])
        except RagError as error:
            return PageViewShown(view, None, "", text(language, "error", message=str(error)))
        from PIL import Image

        picture = Image.open(io.BytesIO(image.png))
        caption = text(language, "page_of", n=view.n, file=view.file_name, page=view.page, pages=view.pages)
        return PageViewShown(view, picture, "", caption)

    @staticmethod
    def clear() -> tuple[list[dict[str, str]], list[ChatTurn], str, str, str]:
        """(chat, conversation, sources, figures, question box): all empty."""
        return [], [], "", "", ""

    # -- documents -----------------------------------------------------------------------------------------
    def documents_view(self, session: SessionSettings) -> DocumentsView:
        try:
            collections = self.library.collections()
            documents = self.library.documents(session.collection)
            folders = [str(folder) for folder in self.library.reingest_folders(session.collection)]
        except RagError as error:
            logger.warning("cannot list documents: %s", error)
            collections, documents, folders = [], [], []
        uploads = self.library.uploads_dir(session.collection)
        return DocumentsView(
            collections=[[c.name, c.chunks, c.embedding_model] for c in collections],
            documents=[[d.file_name, d.chunks, _where(d.path, uploads)] for d in documents],
            document_choices=[(f"{d.file_name} — {_where(d.path, uploads)}", d.path) for d in documents],
            folder_choices=folders,
            collection_names=sorted({c.name for c in collections} | {session.collection}),
        )

    def upload_and_ingest(
        self,
        files: Sequence[str | os.PathLike[str]] | None,
        session: SessionSettings,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Save the uploads under the data dir and ingest them into the session's collection; a Markdown report
        naming every refused or failed file with its reason."""
        language = session.language
        if not files:
            return text(language, "no_files")
        if progress:
            progress(0.0, text(language, "ingest_saving"))
        try:
            upload = self.library.save_uploads(session.collection, [(Path(f).name, f) for f in files])
            report = self.library.ingest_uploads(
                session.collection, upload, on_progress=_progress_reporter(progress, language)
            )
        except RagError as error:
            return text(language, "error", message=str(error))
        return self._report(session, upload, report)

    def delete_document(self, path: str | None, session: SessionSettings) -> str:
        language = session.language
        if not path:
            return text(language, "pick_document")
        try:
            removed = self.library.delete_document(session.collection, path)
        except RagError as error:
            return text(language, "error", message=str(error))
        return text(language, "deleted", file=os.path.basename(path), chunks=removed, collection=session.collection)

    def reingest(self, folder: str | None, session: SessionSettings, progress: ProgressCallback | None = None) -> str:
        language = session.language
        if not folder:
            return text(language, "pick_folder")
        try:
            report = self.library.reingest(
                session.collection, folder, on_progress=_progress_reporter(progress, language)
            )
        except RagError as error:
            return text(language, "error", message=str(error))
        return self._report(session, UploadResult(), report)

    def _report(self, session: SessionSettings, upload: UploadResult, report: Any) -> str:
        language = session.language
        uploads = self.library.uploads_dir(session.collection)
        lines = []
        if report is None:
            lines.append(text(language, "ingest_nothing"))
        else:
            lines.append(
                text(
                    language,
                    "ingest_done",
                    collection=session.collection,
                    added=report.files_added,
                    updated=report.files_updated,
                    unchanged=report.files_unchanged,
                    failed=len(report.files_failed) + len(upload.problems),
                    chunks_added=report.chunks_added,
                    chunks_total=report.chunks_total,
                    seconds=f"{report.seconds:.1f}",
                )
            )
        problems = list(upload.problems) + (list(report.files_failed) if report is not None else [])
        for problem in problems:
            lines.append(text(language, "problem", file=_where(problem.path, uploads), reason=problem.error))
        for note in upload.notes:
            lines.append(text(language, "note", note=note))
        return "\n\n".join(lines)


def _progress_reporter(progress: ProgressCallback | None, language: str) -> Callable[[Any], None] | None:
    if progress is None:
        return None

    def report(event: Any) -> None:
        fraction = event.bytes_done / event.bytes_total if event.bytes_total else 1.0
        current = os.path.basename(event.current) if event.current else ""
        progress(
            min(1.0, fraction),
            text(
                language,
                "ingest_progress",
                files_done=event.files_done,
                files_total=event.files_total,
                chunks=event.chunks_done,
                current=current,
            ),
        )

    return report


def _where(path: str, uploads: Path) -> str:
    """A path as users know it: relative to the uploads folder for uploaded files (the server's layout is not
    their business), else as ingested."""
    try:
        return str(Path(os.path.realpath(path)).relative_to(uploads))
    except ValueError:
        return path


def _openable(event: Any, collection: str) -> list[dict[str, Any]]:
    """The sources of an answer event as the page view opens them: ``[n]``, the document's id (from the passage's
    file), its collection, page and chunk ids; never a path (the view looks the id up among the collection's
    documents)."""
    files = {passage.n: passage.source_abs for passage in event.passages}
    found = []
    for source in event.sources:
        n = int(source.get("n") or 0)
        if n not in files:
            continue
        found.append(
            {
                "n": n,
                "doc_id": document_id(files[n]),
                "collection": collection,
                "page": source.get("page"),
                "chunk_ids": list(source.get("chunk_ids") or [source.get("chunk_id") or ""]),
            }
        )
    return found


def _as_messages(history: Sequence[ChatTurn]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in history]


def render_sources(
    sources: Sequence[dict[str, Any]], language: str, *, final: bool, retrieval_only: bool = False
) -> str:
    """Passages as HTML: file name, page and heading in the summary, the passage text when expanded.

    ``final``: sources of a written answer (cited ones first, uncited ones marked); else the evidence given to the
    model while it writes. ``retrieval_only``: what a person reads instead of an answer, best first with scores.
    """
    if not sources:
        return f"<p>{html.escape(text(language, 'sources_none'))}</p>"
    if retrieval_only:
        sources = sorted(sources, key=lambda source: -float(source.get("score") or 0.0))
    heading = "passages_found" if retrieval_only else "sources" if final else "passages_given"
    parts = [f"<div class='rag-sources'><h4>{html.escape(text(language, heading))}</h4>"]
    if final and not any(source.get("cited") for source in sources):
        parts.append(f"<p>{html.escape(text(language, 'sources_uncited'))}</p>")
    elif final and any(source.get("attributed") for source in sources):
        parts.append(f"<p>{html.escape(text(language, 'sources_attributed'))}</p>")
    for source in sources:
        where = [
            f"<b>[{int(source.get('n', 0))}] {html.escape(str(source.get('file_name') or source.get('source')))}</b>"
        ]
        if source.get("page") is not None:
            where.append(html.escape(text(language, "page", page=source["page"])))
        if source.get("heading"):
            where.append(html.escape(str(source["heading"])))
        if retrieval_only and source.get("score") is not None:
            where.append(html.escape(text(language, "score", score=f"{float(source['score']):.2f}")))
        if "ocr_confidence" in source:
            where.append(html.escape(text(language, "ocr_low" if source.get("low_confidence") else "ocr")))
        if final and source.get("cited") is False and any(s.get("cited") for s in sources):
            where.append(f"<i>{html.escape(text(language, 'not_cited'))}</i>")
        body = html.escape(str(source.get("text", "")))
        n = int(source.get("n", 0))
        has_pages = source.get("page") is not None
        opener = (
            f"<button type='button' class='rag-open' data-source-n='{n}'>"
            f"{html.escape(text(language, 'open_page' if has_pages else 'open_passage'))}</button>"
        )
        parts.append(
            f"<details class='rag-source' id='rag-source-{n}'><summary>{' · '.join(where)} {opener}</summary>"
            f"<div class='rag-passage' style='white-space: pre-wrap'>{body}</div></details>"
        )
    parts.append("</div>")
    return "".join(parts)


def with_notes(figures: str, notes: Sequence[str], language: str = "en") -> str:
    """The figures line, then what the chain noted about this answer (evidence cut by the wait, turns dropped), in
    the reader's language where the note is one the UI knows."""
    if not notes:
        return figures
    return figures + "\n\n" + "\n".join(f"- {html.escape(_note_text(note, language))}" for note in notes)


def _note_text(note: str, language: str) -> str:
    if not isinstance(note, Note) or not has_text(f"note_{note.code}", language):
        return note  # the chain's own English (or a note the UI does not know)
    return text(language, f"note_{note.code}", **note.figures)  # the templates format the figures


def render_reading(stats: AnswerStats, language: str) -> str:
    """While the model reads the prompt: how much, and about how long is left (when its speed is known)."""
    if stats.read_left_s is None:
        return text(language, "reading_unknown", total=f"{stats.to_read_tokens:,}")
    return text(
        language,
        "reading",
        read=f"{stats.read_tokens:,}",
        total=f"{stats.to_read_tokens:,}",
        left=f"{stats.read_left_s:.0f}",
    )


def render_figures(stats: AnswerStats, language: str, *, final: bool = True) -> str:
    """One line of figures: retrieval ms and context tokens; when ``final``, also the time to the first token and
    tokens/s (— without a written answer)."""
    if not final:
        return text(
            language, "figures_retrieval", retrieval_ms=f"{stats.retrieval_ms:.0f}", context_tokens=stats.context_tokens
        )
    none = text(language, "not_applicable")
    first_token = (
        text(language, "seconds", value=f"{stats.first_token_ms / 1000:.2f}")
        if stats.first_token_ms is not None
        else none
    )
    speed = (
        text(language, "tokens_per_s", value=f"{stats.tokens_per_s:.1f}")
        if stats.tokens_per_s is not None
        else text(language, "tokens_per_s", value=none)
    )
    line = text(
        language,
        "figures",
        retrieval_ms=f"{stats.retrieval_ms:.0f}",
        context_tokens=stats.context_tokens,
        first_token=first_token,
        tokens_per_s=speed,
    )
    if stats.rewrite_ms >= 1:  # a first question is not rewritten (microseconds): nothing to show
        line += text(language, "figures_rewrite", rewrite_ms=f"{stats.rewrite_ms:.0f}")
    if stats.reused_tokens:
        line += text(language, "figures_reused", reused_tokens=f"{stats.reused_tokens:,}")
    return line

"""The browser UI's page views, through its handlers (no browser): an answer's sources open their page with the
passage highlighted (previous/next within the document), a Markdown source opens its passage in its text, and the
answer's [n] markers link to their source cards. Real Chroma, the bundled embedder; the scripted backend answers
(it quotes and cites passage [1]): the handlers' logic is the subject."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.app.assistant import Assistant
from rag.app.library import DocumentLibrary
from rag.app.root import Components
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import scripted_llm
from tests.test_page_views import CLEANING, NOTES, WARRANTY, paragraph_region, write_manual
from ui.answer_text import inert_links, linked_markers
from ui.handlers import UiHandlers, render_sources


@pytest.fixture(scope="module")
def handlers(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> UiHandlers:
    root = tmp_path_factory.mktemp("ui-pages")
    (root / "docs").mkdir()
    write_manual(root / "docs" / "manual.pdf")
    (root / "docs" / "notes.md").write_text(NOTES, encoding="utf-8")
    settings = Settings(data_dir=root / "data", embedding_model=BUNDLED_EMBEDDER, chunk_size=32, chunk_overlap=0)
    components = Components(settings, llm=scripted_llm(max_tokens=48, context_window=2048))
    components.share_embedder(embedder)
    assert not components.ingest_pipeline("docs").run([root / "docs"]).files_failed
    return UiHandlers(Assistant(components), DocumentLibrary(components))


def answer(handlers: UiHandlers, question: str) -> tuple[Any, ...]:
    session = handlers.new_session("en")
    *_, last = list(handlers.respond_with_sources(question, [], session))
    return last


def test_a_pdf_source_opens_its_page_highlighted_and_turns(handlers: UiHandlers) -> None:
    session = handlers.new_session("en")
    shown, _, sources_html, _, openable = answer(handlers, "How often should the coffee machine be descaled?")
    assert openable and all(set(item) == {"n", "doc_id", "collection", "page", "chunk_ids"} for item in openable)
    assert all("/" not in item["doc_id"] for item in openable)  # ids, never paths
    assert '<a href="#rag-source-1" class="rag-cite">[1]</a>' in shown[-1]["content"]  # the scripted answer cites [1]
    pdf_source = next(item for item in openable if item["page"] is not None)
    # its card carries the button that opens it, and an anchor the answer's [n] links to
    assert f"data-source-n='{pdf_source['n']}'" in sources_html and f"id='rag-source-{pdf_source['n']}'" in sources_html

    view = handlers.open_source(pdf_source["n"], openable, session)
    assert view.view is not None and view.image is not None and view.passage_html == ""
    assert view.caption == f"[{pdf_source['n']}] manual.pdf · page 1 of 2"
    pixels = np.asarray(view.image.convert("RGB")).astype(int)
    tinted = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < pixels[..., 0] - 60)
    ys, xs = np.nonzero(tinted)
    assert len(xs) > 500
    # the tint lies over the lines of the source's own chunks, as pdfium reports where those lines are
    reader = handlers.library.components.reader("docs")
    texts = [text for text, _ in reader.chunks(pdf_source["chunk_ids"]).values()]
    manual = Path(handlers.library.settings.data_dir).parent / "docs" / "manual.pdf"
    lines = [line for line in WARRANTY + CLEANING if any(line in text.replace("\n", " ") for text in texts)]
    assert lines, texts
    scale = view.image.width / 595.2756
    left, top, right, bottom = (edge * scale for edge in paragraph_region(manual, lines))
    inside = (xs >= left - 6) & (xs <= right + 6) & (ys >= top - 6) & (ys <= bottom + 6)
    assert inside.mean() > 0.95

    following = handlers.show_page(view.view, 1, session)
    assert following.view is not None and following.view.page == 2
    assert following.caption == f"[{pdf_source['n']}] manual.pdf · page 2 of 2"
    assert handlers.show_page(following.view, 5, session).view.page == 2  # type: ignore[union-attr]
    assert handlers.show_page(following.view, -9, session).view.page == 1  # type: ignore[union-attr]
    assert handlers.show_page(None, 1, session).view is None
    assert handlers.open_source(99, openable, session).view is None  # no such source: nothing opens


def test_a_markdown_source_opens_its_passage_in_its_text(handlers: UiHandlers) -> None:
    session = handlers.new_session("zh")
    _, _, _, _, openable = answer(handlers, "Where is the spare toner kept?")
    md_source = next((item for item in openable if item["page"] is None), None)
    assert md_source is not None, openable
    view = handlers.open_source(md_source["n"], openable, session)
    assert view.image is None and '<mark id="rag-passage">' in view.passage_html
    assert view.caption.endswith("notes.md · 段落及其上下文")
    assert handlers.show_page(view.view, 1, session).passage_html == view.passage_html  # no pages to turn


def test_answer_markers_link_to_their_source_cards() -> None:
    answer_text = "Descale monthly [1]. See `[2]` and [9]; a [link](http://x) is not live [2]."
    linked = linked_markers(inert_links(answer_text), {1, 2})
    assert linked.count('href="#rag-source-') == 2
    assert '<a href="#rag-source-1" class="rag-cite">[1]</a>' in linked and "`[2]`" in linked and "[9]" in linked
    assert "http://x" in linked and 'href="http' not in linked
    cards = render_sources([{"n": 1, "file_name": "manual.pdf", "page": 1, "text": "x"}], "en", final=True)
    assert "id='rag-source-1'" in cards and "Open page" in cards

"""The cited page in a real browser: a generated Chinese PDF (two paragraphs far apart on its first page) is asked
about in the browser UI (headless Chromium through playwright, as tests/test_ui_browser.py), the cited source's
**Open page** shows its page, and the highlighted pixels of the image the browser received lie over the passage's
own text, as pdfium reports where that text is, not over the other paragraph. A screenshot of the page view is
written to ``test-artifacts/page-view.png``.

The scripted backend answers (it quotes and cites passage [1]): the page view is the subject, not the model's words.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER, free_port
from tests.fakes import scripted_llm
from tests.test_page_views import text_region
from tests.test_ui_browser import ARTIFACTS, ask, headless_chromium, open_page, wait_for_send_label

pytestmark = pytest.mark.slow

#: Page 1: the paragraph asked about (the Yangtze) at the top, station records below it, and another river's
#: paragraph at the bottom: more text than the evidence budget, so the cited passage (the hit and the neighbours
#: packing adds) never reaches the bottom paragraph.
ASKED = ["长江是中国第一长河，全长约六千三百公里。", "长江流经十一个省级行政区，最后注入东海。"]
RECORDS = [f"第{n}号水文站每日记录水位、流量和泥沙含量，数据每月汇总上报一次。" for n in range(1, 19)]
OTHER = ["黄河是中国第二长河，被称为中华民族的母亲河。", "黄河流域是中华文明的重要发祥地之一。"]
PAGE_TWO = "第二页记录各地水文站的地址。"
QUESTION = "长江全长多少公里？"


def write_rivers(path: Path) -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setFont("STSong-Light", 14)
    for row, line in enumerate(ASKED):
        pdf.drawString(72, 760 - 22 * row, line)
    for row, line in enumerate(RECORDS):
        pdf.drawString(72, 700 - 18 * row, line)
    for row, line in enumerate(OTHER):
        pdf.drawString(72, 340 - 22 * row, line)
    pdf.showPage()
    pdf.setFont("STSong-Light", 14)
    pdf.drawString(72, 760, PAGE_TWO)
    pdf.showPage()
    pdf.save()
    return path


def region_of(path: Path, lines: list[str]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in points of ``lines`` on page 1, from pdfium's own text search."""
    regions = [text_region(path, 1, line) for line in lines]
    return (
        min(r[0] for r in regions),
        min(r[1] for r in regions),
        max(r[2] for r in regions),
        max(r[3] for r in regions),
    )


@pytest.fixture(scope="module")
def served(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The UI on 127.0.0.1 over a store holding the PDF, chunked small so each paragraph is its own passage."""
    from ui.app import build_ui, create_handlers, launch

    root = tmp_path_factory.mktemp("ui-page-view")
    (root / "docs").mkdir()
    pdf = write_rivers(root / "docs" / "rivers.pdf")
    settings = Settings(
        data_dir=root / "data",
        embedding_model=BUNDLED_EMBEDDER,
        chunk_size=32,
        chunk_overlap=0,
        max_context_tokens=256,  # the least budget: the page is more than the passage packing adds
    )
    handlers = create_handlers(settings, llm=scripted_llm(max_tokens=48, context_window=2048, delay=0.01))
    handlers.assistant.components.share_embedder(embedder)
    report = handlers.library.components.ingest_pipeline("docs").run([root / "docs"])
    assert report.files_added == 1 and not report.files_failed
    demo = build_ui(handlers)
    port = free_port()
    launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "pdf": pdf, "handlers": handlers}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    yield from headless_chromium()


def test_the_cited_page_opens_with_the_passage_highlighted(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(browser, served["url"], "zh-CN")
    wait_for_send_label(page, "发送")
    ask(page, QUESTION, 0)
    sources = page.locator("#sources")
    assert "rivers.pdf" in sources.inner_text()
    # the cited card (the scripted answer cites [1]), else the first listed: its "open page" button
    card = sources.locator("details.rag-source").first
    card_text = str(card.locator(".rag-passage").text_content())  # the passage's text (the card is folded)
    opener = card.locator("button.rag-open")
    assert opener.inner_text().strip() == "查看原页"
    opener.click()
    caption = page.locator("#page-caption")
    page.wait_for_function("() => /第 1 页，共 2 页/.test(document.querySelector('#page-caption').innerText)")
    assert "rivers.pdf" in caption.inner_text()
    image = page.locator("#page-image img")
    image.wait_for(state="visible")
    source = image.get_attribute("src")
    assert source
    received = page.context.request.get(source if "://" in source else served["url"] + source.lstrip("/"))
    assert received.ok

    from PIL import Image

    picture = Image.open(io.BytesIO(received.body()))
    assert picture.format == "PNG"  # a page of text, not blurred by a lossy format
    pixels = np.asarray(picture.convert("RGB")).astype(int)
    tinted = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < pixels[..., 0] - 60)
    ys, xs = np.nonzero(tinted)
    assert len(xs) > 300, "no highlight on the page the browser shows"
    # which lines the opened passage holds (its card shows its text), and where pdfium says they are
    shown = card_text.replace("\n", "").replace(" ", "")
    own = [line for line in ASKED + RECORDS + OTHER if line.rstrip("。") in shown]
    assert own and own[0] == ASKED[0] and not set(own) & set(OTHER), card_text
    others = OTHER
    scale = picture.width / 595.2756  # A4's width in points
    margin = 6

    def inside(region: tuple[float, float, float, float]) -> Any:
        left, top, right, bottom = (edge * scale for edge in region)
        return (xs >= left - margin) & (xs <= right + margin) & (ys >= top - margin) & (ys <= bottom + margin)

    assert inside(region_of(served["pdf"], own)).mean() > 0.95  # the tint is over the passage's own text
    assert not inside(region_of(served["pdf"], others)).any()  # and none over the other paragraph
    # the passage's text itself is covered, not just a corner of it
    left, top, right, bottom = (int(edge * scale) for edge in region_of(served["pdf"], own))
    assert tinted[top:bottom, left:right].mean() > 0.3

    ARTIFACTS.mkdir(exist_ok=True)
    image.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "page-view.png"), full_page=True)
    assert (ARTIFACTS / "page-view.png").stat().st_size > 10_000

    page.locator("#page-next").click()  # turning the page: page 2 of 2, nothing highlighted there
    page.wait_for_function("() => /第 2 页，共 2 页/.test(document.querySelector('#page-caption').innerText)")
    page.context.close()

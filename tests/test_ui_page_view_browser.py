"""The cited page in a real browser: a generated Chinese PDF (two paragraphs far apart on its first page) and a
generated scan (a picture of Chinese lines, OCR'd at ingest) are asked about in the browser UI (headless Chromium
through playwright, as tests/test_ui_browser.py), the cited source's **Open page** shows its page, and the
highlighted pixels of the image the browser received lie over the passage's own text (where pdfium says that text
is; for the scan, where its lines' ink was drawn), not over another paragraph. Screenshots of the page views are
written to ``test-artifacts/page-view.png`` and ``page-view-scan.png``.

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

#: The scan: the line asked about at the top, the library's other rules below it (more than the evidence budget),
#: the canteen's line at the bottom; 70 px apart, so OCR makes each line its own paragraph.
SCAN_ASKED = "图书馆每天上午八点开门，晚上十点闭馆。"
SHELVES = [
    "一楼大厅设有自助借还机和失物招领处。",
    "二楼阅览室存放近五年的期刊合订本。",
    "三楼是古籍部，查阅古籍须提前预约。",
    "四楼自习区共有三百个座位，不可占座。",
    "地下室的密集书库只对馆员开放。",
    "新生入馆教育每年九月第二周举行。",
    "校外读者凭身份证办理临时阅览证。",
    "逾期归还图书按每册每日一角收费。",
    "电子资源可在校园网内免费下载全文。",
    "研讨间可容纳八人，最长使用两小时。",
    "复印打印服务位于一楼东侧走廊尽头。",
    "馆内禁止饮食，饮水须使用带盖水杯。",
    "寒暑假期间开放时间另行通知。",
    "捐赠图书请送至二楼采编部登记。",
    "视障读者可借用馆内的读屏设备。",
    "毕业生离校前须还清全部借阅图书。",
]
SCAN_LINES = [SCAN_ASKED, *SHELVES, "食堂午餐供应时间为十一点到一点，晚餐五点开始。"]
SCAN_QUESTION = "图书馆每天几点开门？"


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


def write_scan(path: Path) -> tuple[Path, int]:
    """The scan as a one-page PDF with no text layer (a picture at 150 dpi); the picture's width in pixels."""
    from PIL import Image

    from tests.test_ocr import scan

    picture = scan(SCAN_LINES, path.with_suffix(".png"))
    with Image.open(picture) as image:
        image.convert("RGB").save(path, "PDF", resolution=150)
        width = image.width
    picture.unlink()
    return path, width


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
    from ingest.ocr import OcrEngine

    scanned = OcrEngine.available()  # without the ocr extra the scan is skipped (CI installs it)
    scan_width = write_scan(root / "docs" / "library-scan.pdf")[1] if scanned else 0
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
    assert report.files_added == 1 + scanned and not report.files_failed, report
    demo = build_ui(handlers)
    port = free_port()
    launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "pdf": pdf, "scan_width": scan_width, "handlers": handlers}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    yield from headless_chromium()


def open_cited_page(browser: Any, served: dict[str, Any], question: str, file_name: str) -> dict[str, Any]:
    """Ask ``question`` in a Chinese browser, open the cited source's page; the page, the card's passage text, the
    PNG the browser received, its highlighted pixels (a mask) and their coordinates."""
    page = open_page(browser, served["url"], "zh-CN")
    wait_for_send_label(page, "发送")
    ask(page, question, 0)
    sources = page.locator("#sources")
    assert file_name in sources.inner_text()
    # the cited card (the scripted answer cites [1]), else the first listed: its "open page" button
    card = sources.locator("details.rag-source").first
    assert file_name in card.inner_text()
    card_text = str(card.locator(".rag-passage").text_content())  # the passage's text (the card is folded)
    opener = card.locator("button.rag-open")
    assert opener.inner_text().strip() == "查看原页"
    opener.click()
    caption = page.locator("#page-caption")
    page.wait_for_function("name => document.querySelector('#page-caption').innerText.includes(name)", arg=file_name)
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
    return {"page": page, "caption": caption, "image": image, "card_text": card_text, "picture": picture,
            "tinted": tinted, "xs": xs, "ys": ys}  # fmt: skip


def within(view: dict[str, Any], region: tuple[float, float, float, float], scale: float, margin: int = 6) -> Any:
    """Which highlighted pixels lie inside ``region`` (in page units, ``scale`` pixels each), give or take
    ``margin`` pixels."""
    xs, ys = view["xs"], view["ys"]
    left, top, right, bottom = (edge * scale for edge in region)
    return (xs >= left - margin) & (xs <= right + margin) & (ys >= top - margin) & (ys <= bottom + margin)


def screenshot(view: dict[str, Any], name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    view["image"].scroll_into_view_if_needed()
    view["page"].screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert (ARTIFACTS / name).stat().st_size > 10_000


def test_the_cited_page_opens_with_the_passage_highlighted(browser: Any, served: dict[str, Any]) -> None:
    view = open_cited_page(browser, served, QUESTION, "rivers.pdf")
    page = view["page"]
    page.wait_for_function("() => /第 1 页，共 2 页/.test(document.querySelector('#page-caption').innerText)")
    # which lines the opened passage holds (its card shows its text), and where pdfium says they are
    shown = view["card_text"].replace("\n", "").replace(" ", "")
    own = [line for line in ASKED + RECORDS + OTHER if line.rstrip("。") in shown]
    assert own and own[0] == ASKED[0] and not set(own) & set(OTHER), view["card_text"]
    scale = view["picture"].width / 595.2756  # A4's width in points
    assert within(view, region_of(served["pdf"], own), scale).mean() > 0.95  # the tint is over the passage's text
    assert not within(view, region_of(served["pdf"], OTHER), scale).any()  # and none over the other paragraph
    # the passage's text itself is covered, not just a corner of it
    left, top, right, bottom = (int(edge * scale) for edge in region_of(served["pdf"], own))
    assert view["tinted"][top:bottom, left:right].mean() > 0.3
    screenshot(view, "page-view.png")

    page.locator("#page-next").click()  # turning the page: page 2 of 2, nothing highlighted there
    page.wait_for_function("() => /第 2 页，共 2 页/.test(document.querySelector('#page-caption').innerText)")
    page.context.close()


def test_a_scanned_page_opens_with_the_ocr_read_passage_highlighted(browser: Any, served: dict[str, Any]) -> None:
    if not served["scan_width"]:
        pytest.skip("the OCR extra is not installed")
    from rapidfuzz import fuzz

    from tests.test_ocr import ink_box

    view = open_cited_page(browser, served, SCAN_QUESTION, "library-scan.pdf")
    page = view["page"]
    page.wait_for_function("() => /第 1 页，共 1 页/.test(document.querySelector('#page-caption').innerText)")
    # the lines the passage holds, as OCR read them (a character may differ): where their ink was drawn
    shown = "".join(view["card_text"].split())
    # (each line says something else: a line the passage holds matches it nearly whole, the others barely; a line
    # the chunk cut in two is in neither list)
    own = [row for row, line in enumerate(SCAN_LINES) if fuzz.partial_ratio(line, shown) >= 70]
    others = [row for row, line in enumerate(SCAN_LINES) if fuzz.partial_ratio(line, shown) < 40]
    assert own and own[0] == 0 and others, view["card_text"]
    scale = view["picture"].width / served["scan_width"]  # page-view pixels per scan pixel
    boxes = [ink_box(SCAN_LINES, row) for row in own]
    region = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    assert within(view, region, scale, margin=10).mean() > 0.95  # the tint is over the passage's own lines
    for row in others:  # and over no other line's ink
        left, top, right, bottom = ink_box(SCAN_LINES, row)
        assert not within(view, (left, top + 8, right, bottom - 8), scale, margin=0).any(), SCAN_LINES[row]
    left, top, right, bottom = (int(edge * scale) for edge in ink_box(SCAN_LINES, 0))
    assert view["tinted"][top:bottom, left:right].mean() > 0.3  # the asked line itself is covered
    screenshot(view, "page-view-scan.png")
    page.context.close()

"""Loading real files of every promised format and encoding through the real parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.load import LoadError, decode_text, load_document
from tests.documents import (
    BIG5_TEXT,
    GBK_TEXT,
    PDF_PAGES,
    UTF16_TEXT,
    write_corpus,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("docs"))


@pytest.mark.parametrize(
    ("role", "expected"),
    [("gbk", "带薪年假十五天"), ("utf16", "营业收入为一百二十亿元"), ("big5", "春節期間加開列車")],
)
def test_text_encodings_are_detected(files: dict[str, Path], role: str, expected: str) -> None:
    document = load_document(files[role])
    assert expected in document.text
    assert "\ufffd" not in document.text


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        (GBK_TEXT, "gb18030"),
        (BIG5_TEXT, "big5"),
        (UTF16_TEXT, "utf-16-le"),  # no BOM
        (UTF16_TEXT, "utf-16-be"),
        (UTF16_TEXT, "utf-8-sig"),
        (GBK_TEXT + "English too.", "utf-8"),
    ],
)
def test_decode_text_round_trips(text: str, encoding: str) -> None:
    assert decode_text(text.encode(encoding)).strip() == text.strip()


def test_binary_is_refused() -> None:
    with pytest.raises(LoadError, match="binary"):
        decode_text(bytes(range(256)) * 10)


def test_markdown_headings_become_paths(files: dict[str, Path]) -> None:
    document = load_document(files["markdown"])
    warning = next(e for e in document.elements if "潮湿" in e.text)
    assert warning.heading == ("产品手册", "安装", "注意事项")
    cleaning = next(e for e in document.elements if "Descale" in e.text)
    assert cleaning.heading == ("产品手册", "Cleaning")


def test_html_table_keeps_rows_and_cells(files: dict[str, Path]) -> None:
    document = load_document(files["html"])
    table = next(e for e in document.elements if e.kind == "table")
    assert table.text.splitlines() == ["水果 | 价格 | 产地", "苹果 | 12 | 烟台", "荔枝 | 38 | 增城"]
    assert table.heading == ("水果价格",)


def test_pdf_keeps_page_numbers(files: dict[str, Path]) -> None:
    document = load_document(files["pdf"])
    pages = {e.page: e.text.replace(" ", "") for e in document.elements}
    assert set(pages) == {1, 2}
    assert PDF_PAGES[0].replace(" ", "") in pages[1]
    assert PDF_PAGES[1].replace(" ", "") in pages[2]


def test_docx_headings(files: dict[str, Path]) -> None:
    document = load_document(files["docx"])
    budget = next(e for e in document.elements if "三百万元" in e.text)
    assert budget.heading == ("会议纪要", "决议")


def test_offsets_point_into_the_extracted_text(files: dict[str, Path]) -> None:
    document = load_document(files["markdown"])
    for element, offset in zip(document.elements, document.offsets, strict=True):
        assert document.text[offset : offset + len(element.text)] == element.text


@pytest.mark.parametrize(
    ("role", "reason"),
    [("corrupt_pdf", "corrupt or unreadable PDF"), ("empty", "no text"), ("binary_txt", "binary content")],
)
def test_bad_files_raise_a_clear_reason(files: dict[str, Path], role: str, reason: str) -> None:
    with pytest.raises(LoadError, match=reason):
        load_document(files[role])


def test_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "program.exe"
    path.write_bytes(b"MZ\x90\x00")
    with pytest.raises(LoadError, match=r"unsupported format '\.exe'"):
        load_document(path)


def test_unstructured_offline_hook_still_exists() -> None:
    """unstructured's private spaCy loader is what we replace; if it moves, text partitioning goes online."""
    import unstructured.nlp.tokenize as tokenize

    from ingest._offline import install_offline_nlp

    install_offline_nlp()
    nlp = tokenize._get_nlp()
    assert nlp.pipe_names == ["sentencizer"]


def _write_more_formats(folder: Path) -> dict[str, tuple[Path, str]]:
    import openpyxl
    import pptx

    slides = pptx.Presentation()
    slide = slides.slides.add_slide(slides.slide_layouts[1])
    slide.shapes.title.text = "季度目标"
    slide.placeholders[1].text = "完成三个新客户的签约。"
    slides.save(str(folder / "plan.pptx"))
    book = openpyxl.Workbook()
    book.active.append(["产品", "价格"])
    book.active.append(["苹果", 3])
    book.save(str(folder / "prices.xlsx"))
    (folder / "people.csv").write_text("姓名,年龄\n张三,30\n李四,25\n", encoding="utf-8")
    (folder / "mail.eml").write_text(
        "From: a@example.com\nTo: b@example.com\nSubject: 通知\nContent-Type: text/plain; charset=utf-8\n\n"
        "明天上午十点开会。\n",
        encoding="utf-8",
    )
    (folder / "guide.rst").write_text("安装指南\n========\n\n运行安装程序即可。\n", encoding="utf-8")
    return {
        "pptx": (folder / "plan.pptx", "完成三个新客户的签约"),
        "xlsx": (folder / "prices.xlsx", "苹果 | 3"),
        "csv": (folder / "people.csv", "张三 | 30"),
        "eml": (folder / "mail.eml", "明天上午十点开会"),
        "rst": (folder / "guide.rst", "运行安装程序即可"),
    }


@pytest.mark.parametrize("kind", ["pptx", "xlsx", "csv", "eml", "rst"])
def test_more_formats_through_unstructured(tmp_path: Path, kind: str) -> None:
    path, expected = _write_more_formats(tmp_path)[kind]
    assert expected in load_document(path).text


def test_docx_and_xlsx_tables_keep_their_rows_and_sheet_names(tmp_path: Path) -> None:
    import docx
    import openpyxl

    document = docx.Document()
    document.add_heading("价格表", level=1)
    document.add_paragraph("下表列出水果价格。")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([("水果", "价格", "产地"), ("苹果", "12", "烟台"), ("荔枝", "38", "增城")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.save(str(tmp_path / "prices.docx"))
    [found] = [e for e in load_document(tmp_path / "prices.docx").elements if e.kind == "table"]
    assert found.text.splitlines() == ["水果 | 价格 | 产地", "苹果 | 12 | 烟台", "荔枝 | 38 | 增城"]
    assert found.heading == ("价格表",)

    workbook = openpyxl.Workbook()
    stock = workbook.active
    assert stock is not None
    stock.title = "库存"
    for values in [("品名", "数量", "仓库"), ("螺丝", 1200, "上海"), ("螺母", 800, "北京")]:
        stock.append(values)
    workbook.create_sheet("单价").append(("品名", "单价"))
    workbook["单价"].append(("螺丝", 0.5))
    workbook.save(str(tmp_path / "stock.xlsx"))
    sheets = load_document(tmp_path / "stock.xlsx").elements
    assert [(e.kind, e.heading, e.page, e.text.splitlines()) for e in sheets] == [
        ("table", ("库存",), 1, ["品名 | 数量 | 仓库", "螺丝 | 1200 | 上海", "螺母 | 800 | 北京"]),
        ("table", ("单价",), 2, ["品名 | 单价", "螺丝 | 0.5"]),
    ]


def test_the_glyph_numbers_of_a_font_without_a_tounicode_map_are_not_text() -> None:
    from ingest.load import _usable_text

    # what pypdf extracts from a TrueType subset without its ToUnicode map (bench/pdf_text.py): mostly printable
    garbage = '\\\x0f[\x01f:\n56OQ\x0f);qdn8\x0ePrg\x1aUomXn8^\r\nE,O+_Krg\x1d!lWTr"EB1Y.$_C\r'
    assert not _usable_text(garbage)  # read by OCR instead
    assert _usable_text("Net sales\t$ 82,959\t$ 83,360\nOperating income 23,076\r\n")
    assert _usable_text("第二章 财务\n2023年第三季度营业收入为1,234.5亿元，同比增长8.6%。")


def _write_table_pdf(path: Path, *, chinese: bool) -> list[tuple[str, list[str]]]:
    """A text PDF with a title, a sentence and a financial table: a two-line header (one period over two dates),
    section labels, right-aligned figures with $ and negatives in parentheses, 40 rows. Returns the rows."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    font = "STSong-Light" if chinese else "Helvetica"
    if chinese:
        period, dates = "截至九月三十日止九个月", ["2024年", "2023年"]
    else:
        period, dates = "Nine Months Ended", ["2024", "2023"]
    label = "分部{}收入" if chinese else "Segment {} revenue"
    rows = [(label.format(i), [f"${1000 + 7 * i:,}" if i % 10 == 0 else f"{1000 + 7 * i:,}", f"({200 + i})"])
            for i in range(40)]  # fmt: skip
    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setFont(font, 14)
    pdf.drawString(60, 800, "简明合并利润表" if chinese else "Condensed Statements of Operations")
    pdf.setFont(font, 9)
    pdf.drawString(60, 780, "以下金额单位为百万元。" if chinese else "The figures below are in millions.")
    pdf.drawCentredString(450, 755, period)
    pdf.drawRightString(420, 742, dates[0])
    pdf.drawRightString(500, 742, dates[1])
    y = 725
    pdf.drawString(60, y, "收入：" if chinese else "Revenue:")
    for name, (this_year, last_year) in rows:
        y -= 15
        pdf.drawString(72, y, name)
        pdf.drawRightString(420, y, this_year)
        pdf.drawRightString(500, y, last_year)
    pdf.showPage()
    pdf.save()
    return rows


@pytest.mark.parametrize("chinese", [False, True], ids=["english", "chinese"])
def test_a_pdf_table_keeps_its_columns_and_header_and_repeats_it_when_split(tmp_path: Path, chinese: bool) -> None:
    from ingest.chunk import chunk_document
    from tests.test_chunk import CharCounter

    rows = _write_table_pdf(tmp_path / "statement.pdf", chinese=chinese)
    document = load_document(tmp_path / "statement.pdf")
    [table] = [e for e in document.elements if e.kind == "table"]
    header, *lines = table.text.splitlines()
    if chinese:
        assert header == "| 截至九月三十日止九个月 2024年 | 截至九月三十日止九个月 2023年"
        assert lines[0] == "收入："
    else:
        assert header == "| Nine Months Ended 2024 | Nine Months Ended 2023"
        assert lines[0] == "Revenue:"
    assert lines[1:] == [f"{name} | {this_year} | {last_year}" for name, (this_year, last_year) in rows]
    assert table.page == 1
    prose = [e.text for e in document.elements if e.kind != "table"]
    assert prose[-1] == ("以下金额单位为百万元。" if chinese else "The figures below are in millions.")

    # the layout pass reuses the plain pass's parsed page (pypdf internals): it must give pypdf's own layout text
    from pypdf import PdfReader

    from ingest.load import _layout_text, _parsed_once

    [page] = PdfReader(tmp_path / "statement.pdf").pages
    plain = page.extract_text()
    assert _parsed_once(page).extract_text() == plain
    assert _layout_text(page) == page.extract_text(extraction_mode="layout")

    chunks = chunk_document(document, CharCounter(), max_tokens=400, overlap=0)
    continued = [c for c in chunks if c.table_header]
    assert continued, "a 40-row table in 400-character chunks is split"
    for chunk in continued:
        assert chunk.table_header == header
        assert chunk.embed_text.endswith(f"{header}\n{chunk.text}")  # the column names, then the rows
        assert chunk.text == document.text[chunk.start : chunk.end]


def test_a_pdf_page_of_prose_with_figures_stays_paragraphs(tmp_path: Path) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    sentences = [f"In quarter {i} revenue grew 12.{i}% to $4,{i}00 million and margins rose 1.{i} points." for i in
                 range(1, 6)]  # fmt: skip
    pdf = canvas.Canvas(str(tmp_path / "letter.pdf"), pagesize=A4)
    pdf.setFont("Helvetica", 10)
    for i, sentence in enumerate(sentences):
        pdf.drawString(60, 780 - 14 * i, sentence)
    pdf.showPage()
    pdf.save()
    document = load_document(tmp_path / "letter.pdf")
    assert [e.kind for e in document.elements] == ["text"]  # numbers inside sentences are not a table
    assert document.elements[0].text.splitlines() == sentences

"""Where chunks lie on their pages, kept at ingest: real PDFs written here with reportlab at known positions (two
columns, a paragraph running over a page break, a rotated page, a table), read by the real loader (pypdf text,
pypdfium2 boxes); an OCR'd scan through the real RapidOCR; the compact form chunk metadata keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingest.boxes import TextBoxes, align_text
from ingest.chunk import chunk_document
from ingest.load import LoadedDocument, load_document
from rag.chunks import PageBox, decode_boxes, encode_boxes
from tests.test_chunk import CharCounter

A4_WIDTH, A4_HEIGHT = 595.2756, 841.8898
FONT_SIZE = 11


def write_pdf(path: Path, pages: list[list[tuple[float, float, str]]], *, rotate: int = 0) -> Path:
    """A PDF whose pages hold lines of Helvetica at (x, baseline y) in PDF points (origin bottom-left)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    for lines in pages:
        if rotate:
            pdf.setPageRotation(rotate)
        pdf.setFont("Helvetica", FONT_SIZE)
        for x, y, text in lines:
            pdf.drawString(x, y, text)
        pdf.showPage()
    pdf.save()
    return path


def shown_band(y: float) -> tuple[float, float]:
    """The top and bottom (from the page's top) between which a line whose baseline is at ``y`` lies."""
    return A4_HEIGHT - y - FONT_SIZE, A4_HEIGHT - y + 0.3 * FONT_SIZE


def boxes_of(document: LoadedDocument, text: str) -> tuple[PageBox, ...]:
    start = document.text.find(text)
    assert start >= 0, f"{text!r} not in the extracted text"
    assert document.boxes is not None
    return document.boxes.locate(start, start + len(text))


def test_two_columns_each_passage_in_its_own_column(tmp_path: Path) -> None:
    left = ["The left column begins here.", "It talks about apples and", "their orchards in spring."]
    right = ["The right column is separate.", "It covers invoices paid", "within thirty days."]
    lines = [(60.0, 700.0 - 16 * i, text) for i, text in enumerate(left)]
    lines += [(320.0, 700.0 - 16 * i, text) for i, text in enumerate(right)]
    document = load_document(write_pdf(tmp_path / "columns.pdf", [lines]))

    left_boxes = boxes_of(document, "It talks about apples and")
    right_boxes = boxes_of(document, "It covers invoices paid")
    assert len(left_boxes) == 1 and len(right_boxes) == 1, (left_boxes, right_boxes)
    (l_box,), (r_box,) = left_boxes, right_boxes
    assert 59 <= l_box.left <= 63 and l_box.right < 300, l_box
    assert 319 <= r_box.left <= 323 and r_box.right < A4_WIDTH, r_box
    top, bottom = shown_band(684.0)
    for box in (l_box, r_box):
        assert top - 1 <= box.top and box.bottom <= bottom + 1 and box.page == 1

    # a passage spanning a whole column: one rectangle per line, all in that column
    column = boxes_of(document, "\n".join(left))
    assert len(column) == 3 and all(box.right < 300 for box in column)
    assert [round(box.top) for box in column] == sorted(round(box.top) for box in column)


def test_a_paragraph_over_a_page_break_has_boxes_on_both_pages(tmp_path: Path) -> None:
    first = [(72.0, 100.0, "The warranty lasts two years from the day of purchase and covers")]
    second = [(72.0, 770.0, "every part except the battery, which is covered for one year.")]
    path = write_pdf(tmp_path / "break.pdf", [first, second])
    document = load_document(path)
    start = document.text.find("The warranty lasts")
    end = document.text.find("for one year.") + len("for one year.")
    assert document.boxes is not None
    spanning = document.boxes.locate(start, end)
    assert {box.page for box in spanning} == {1, 2}
    on_first = [box for box in spanning if box.page == 1]
    on_second = [box for box in spanning if box.page == 2]
    assert shown_band(100.0)[0] - 1 <= on_first[0].top and on_first[0].bottom <= shown_band(100.0)[1] + 1
    assert shown_band(770.0)[0] - 1 <= on_second[0].top and on_second[0].bottom <= shown_band(770.0)[1] + 1

    # the chunker never lets a chunk cross a page: each half is its own chunk, with boxes on its own page
    chunks = chunk_document(document, CharCounter(), max_tokens=200, overlap=0)
    assert [chunk.page for chunk in chunks] == [1, 2]
    assert [{box.page for box in chunk.boxes} for chunk in chunks] == [{1}, {2}]


def test_a_rotated_page_has_boxes_where_the_page_is_shown(tmp_path: Path) -> None:
    import pypdfium2

    text = "This line was written on a page turned a quarter."
    # reportlab writes a turned A4 page as a landscape media box (841 x 595 points) with /Rotate 90: shown upright
    path = write_pdf(tmp_path / "rotated.pdf", [[(72.0, 400.0, text)]], rotate=90)
    document = load_document(path)
    (box,) = boxes_of(document, text)
    # the line, written left to right on the landscape box, runs downwards on the page as shown
    assert box.bottom - box.top > 5 * (box.right - box.left)
    assert abs(box.top - 72) < 3 and box.left < 400 < box.right and box.right - box.left < FONT_SIZE, box
    pdf = pypdfium2.PdfDocument(str(path))
    image = pdf[0].render(scale=2).to_pil().convert("L")
    pdf.close()
    inside = image.crop((int(box.left * 2), int(box.top * 2), int(box.right * 2) + 1, int(box.bottom * 2) + 1))
    outside = image.crop((int(box.right * 2) + 30, int(box.top * 2), int(box.right * 2) + 60, int(box.bottom * 2)))
    assert min(inside.getdata()) < 100  # the glyphs are inside the box on the shown page
    assert min(outside.getdata()) > 200  # and nothing beside it


def test_a_table_row_lies_on_its_line_in_one_rectangle_per_cell(tmp_path: Path) -> None:
    from tests.test_load import _write_table_pdf

    rows = _write_table_pdf(tmp_path / "statement.pdf", chinese=False)  # rows at y = 710, 695, ...; 9-point type
    document = load_document(tmp_path / "statement.pdf")
    [table] = [element for element in document.elements if element.kind == "table"]  # pypdf's layout text
    name, (this_year, last_year) = rows[3]
    row = f"{name} | {this_year} | {last_year}"
    assert row in table.text
    cells = boxes_of(document, row)
    assert len(cells) == 3, cells  # a rectangle per cell, not one across the gaps (nor the " | " we added)
    baseline = 725 - 15 * 4
    for box in cells:
        assert A4_HEIGHT - baseline - 9 - 1 <= box.top and box.bottom <= A4_HEIGHT - baseline + 3 + 1, box
    assert abs(cells[0].left - 72) < 3
    assert abs(cells[1].right - 420) < 3 and abs(cells[2].right - 500) < 3


def test_boxes_travel_compactly_and_a_missing_value_means_none() -> None:
    boxes = (PageBox(1, 72.04, 100.0, 300.55, 112.5), PageBox(2, 0, 0, 10, 10))
    encoded = encode_boxes(boxes)
    assert encoded == "[[1,72.0,100.0,300.6,112.5],[2,0.0,0.0,10.0,10.0]]"
    assert decode_boxes(encoded) == (PageBox(1, 72.0, 100.0, 300.6, 112.5), PageBox(2, 0.0, 0.0, 10.0, 10.0))
    for old_or_broken in (None, "", "not json", "[[1, 2]]", 7):
        assert decode_boxes(old_or_broken) == ()


def test_alignment_survives_spacing_and_order_differences() -> None:
    ours = "Revenue1,234.5Netincome356.2"
    theirs = "Netincome356.2XRevenue1,234.5"
    found = align_text(ours, theirs)
    assert [theirs[i] for i in found if i >= 0] == list(ours)
    assert align_text("abc", "") == [-1, -1, -1]


def test_an_ocr_line_cut_by_a_chunk_is_cut_in_proportion() -> None:
    # one OCR line of 20 characters from x=100 to x=300: a chunk of its second half covers its right half
    boxes = TextBoxes.from_spans([(0, 20, 1, 100.0, 50.0, 300.0, 70.0), (21, 31, 1, 100.0, 80.0, 200.0, 100.0)])
    (half,) = boxes.locate(10, 20)
    assert (half.left, half.right, half.top, half.bottom) == (200.0, 300.0, 50.0, 70.0)
    assert len(boxes.locate(10, 31)) == 2  # and the next line is its own rectangle
    assert boxes.locate(40, 50) == ()


@pytest.fixture(scope="module")
def ocr() -> Any:
    from ingest.ocr import OcrEngine

    if not OcrEngine.available():
        pytest.skip("the OCR extra is not installed")
    return OcrEngine()


def test_ocr_lines_keep_their_boxes(ocr: Any, tmp_path: Path) -> None:
    from tests.test_ocr import scan

    lines = ["员工每年享有十五天带薪年假。", "The coffee machine is descaled monthly."]
    path = scan(lines, tmp_path / "scan.png")
    document = load_document(path, ocr=ocr)
    assert document.boxes is not None and len(document.boxes) >= 2
    assert len(document.elements) == 2  # a paragraph each: the lines are far apart
    line_boxes = []
    for row, (element, offset) in enumerate(zip(document.elements, document.offsets, strict=True)):
        (box,) = document.boxes.locate(offset, offset + len(element.text))
        # drawn at x=60, y=60+70*row in a 1240-px-wide image turned 1.5 degrees (which shifts it by a few dozen px)
        assert box.page == 1 and 30 <= box.left <= 100, box
        assert abs(box.top - (60 + 70 * row)) < 45 and 15 < box.bottom - box.top < 70, box
        line_boxes.append(box)
    # a word inside a line: the line's box cut in proportion to the characters before and after it
    start = document.text.find("coffee")
    assert start >= 0, document.text
    (word,) = document.boxes.locate(start, start + len("coffee"))
    line = line_boxes[1]
    assert line.left < word.left < word.right < line.right and (word.top, word.bottom) == (line.top, line.bottom)
    chunks = chunk_document(document, CharCounter(), max_tokens=200, overlap=0)
    assert all(chunk.boxes for chunk in chunks)

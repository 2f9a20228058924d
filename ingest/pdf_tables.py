"""Tables of a PDF page's text layer: rows with their column headers, from pypdf's layout text.

pypdf's plain text keeps a table row on one line but loses its columns ("Products $ 63,355 $ 63,948 ...") and
breaks a header over lines ("June 25,\\n2022"). Its layout mode keeps the columns where they are printed; from it a
table becomes a header line naming each column ("Three Months Ended June 25,2022") above rows whose cells line up
under it ("Products | $63,355 | $63,948"), which the chunker keeps together and repeats above a split.

Only pages whose plain text looks tabular are read twice (:func:`looks_tabular`), so prose pages cost what they
did. A block is a table only when its header is found above its rows: a header cannot be guessed, and a data row
repeated as if it named the columns would mislead more than plain lines do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["layout_blocks", "looks_tabular"]

#: A value in a table cell: amounts, percentages, negatives in parentheses, dashes for nothing.
_VALUE = re.compile(r"^[$€£¥]?\(?[-+]?[$€£¥]?\d[\d,.]*\)?%?$|^[—–-]+$")
#: A year alone: a line of them over the value columns is a header line, not a row.
_YEAR = re.compile(r"^(?:19|20)\d\d$")
#: Two or more spaces separate cells in layout text (a label's own words have one).
_CELL = re.compile(r"\S+(?: \S+)*")
_NUMBERS = re.compile(r"(?<![\w.])\(?\d[\d,.]*\)?%?(?![\w.])")
_CJK_GAP = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s+(?=[\u3000-\u9fff\uff00-\uffef])")
#: Rows at least, for a block to be a table.
_MIN_ROWS = 3
#: A section label inside a table ("Operating expenses:"): at most this long, at most this many in a row.
_MAX_LABEL = 120
_MAX_LABELS = 3
#: More blank lines than this in a row end a table.
_MAX_BLANKS = 3
#: Columns whose right edges are this close (characters) are one column.
_ALIGN = 4


def looks_tabular(plain_text: str) -> bool:
    """Whether a page's plain text has rows of numbers: three lines that hold two numbers or more and end with one
    (a sentence quoting figures rarely ends on one), or (a table drawn cell by cell, which plain text gives a line
    each) six lines that are one value each. Measured on 131 SEC 10-Q pages: 86 read again, all 51 with a table."""
    rows = alone = 0
    for line in plain_text.splitlines():
        words = line.split()
        if not words:
            continue
        ends_on_value = bool(_VALUE.match(words[-1]))
        rows += ends_on_value and len(_NUMBERS.findall(line)) >= 2
        alone += ends_on_value and len(words) == 1
        if rows >= _MIN_ROWS or alone >= 2 * _MIN_ROWS:
            return True
    return False


@dataclass(frozen=True)
class _Cell:
    start: int
    end: int
    text: str

    @property
    def center(self) -> float:
        return (self.start + self.end) / 2


def _cells(line: str) -> list[_Cell]:
    cells: list[_Cell] = []
    for match in _CELL.finditer(line):
        cell = _Cell(match.start(), match.end(), match.group())
        if cells and cells[-1].text in {"$", "€", "£", "¥", "("}:  # "$      63,355": the sign belongs to its number
            sign = cells.pop()
            cell = _Cell(cell.start, cell.end, sign.text + cell.text)
        cells.append(cell)
    return cells


def _is_value(cell: _Cell) -> bool:
    return bool(_VALUE.match(cell.text.replace(" ", "")))


def _row(cells: list[_Cell]) -> tuple[str, list[_Cell]] | None:
    """(label, value cells) when the line is a table row: a label (or none) and at least two values after it."""
    values = [cell for cell in cells if _is_value(cell)]
    if len(values) < 2:
        return None
    first = cells.index(values[0])
    if any(not _is_value(cell) for cell in cells[first:]):
        return None  # words between the numbers: a sentence that quotes figures, not a row
    if first == 0 and all(_YEAR.match(cell.text) for cell in values):
        return None  # "2024   2023" over the columns: a header line
    return " ".join(cell.text for cell in cells[:first]), values


def layout_blocks(layout_text: str) -> list[tuple[str, str]]:
    """The page as ``(kind, text)`` blocks in reading order: ``"table"`` (header line, then one line per row,
    cells separated by `` | ``) and ``"text"`` (a paragraph, its spacing collapsed)."""
    lines = layout_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[tuple[str, str]] = []
    prose: list[str] = []

    def flush_prose() -> None:
        for paragraph in _paragraphs(prose):
            blocks.append(("text", paragraph))
        prose.clear()

    previous: _Columns | None = None  # a table continued below a break keeps the header printed above it
    i = 0
    while i < len(lines):
        table = _table_at(lines, i, previous)
        if table is None:
            prose.append(lines[i])
            i += 1
            continue
        header_start, end, text, previous = table
        del prose[len(prose) - (i - header_start) :]  # the header lines were read as prose
        flush_prose()
        blocks.append(("table", text))
        i = end
    flush_prose()
    return blocks


def _table_at(lines: list[str], start: int, previous: _Columns | None = None) -> tuple[int, int, str, _Columns] | None:
    """The table whose first row is line ``start``: (first header line, line after the table, its text, its
    columns). Without a header of its own, a table whose columns line up with ``previous`` (the page's table above
    it, interrupted by prose) continues under that one's header."""
    if _row(_cells(lines[start])) is None:
        return None
    rows: list[tuple[str, list[_Cell]]] = []
    end = start
    pending_labels: list[str] = []  # "Net sales:" above its rows, kept when rows follow
    blanks = 0
    for i in range(start, len(lines)):
        cells = _cells(lines[i])
        row = _row(cells) if cells else None
        if row is not None:
            rows.extend((label, []) for label in pending_labels)
            pending_labels.clear()
            rows.append(row)
            end = i + 1
            blanks = 0
        elif not cells:
            blanks += 1  # blank lines between a table's sections
            if blanks > _MAX_BLANKS:
                break
        elif len(cells) == 1 and len(cells[0].text) <= _MAX_LABEL and len(pending_labels) < _MAX_LABELS:
            pending_labels.append(cells[0].text)
        else:
            break
    if sum(1 for _, values in rows if values) < _MIN_ROWS:
        return None
    columns = _columns([cell for _, values in rows for cell in values])
    header_start, header, leading = _header(lines, start, columns)
    if header is None and previous is not None and _aligned(previous.columns, columns):
        header_start, header, leading, columns = start, previous.names, [], previous.columns
    if header is None:
        return None
    rows[:0] = [(label, []) for label in leading]
    table_lines = [" | ".join(["", *header]).strip()]
    for label, values in rows:
        placed = [""] * len(columns)
        for cell in values:
            index = _nearest(columns, cell.end)
            placed[index] = f"{placed[index]} {cell.text}".strip()
        table_lines.append(" | ".join([label, *placed]) if values else label)
    return header_start, end, "\n".join(table_lines), _Columns(columns, header)


@dataclass(frozen=True)
class _Columns:
    columns: list[tuple[int, int]]
    names: list[str]


def _aligned(these: list[tuple[int, int]], those: list[tuple[int, int]]) -> bool:
    return len(these) == len(those) and all(abs(a[1] - b[1]) <= _ALIGN for a, b in zip(these, those, strict=True))


def _columns(values: list[_Cell]) -> list[tuple[int, int]]:
    """Value columns as (leftmost start, rightmost end), left to right: numbers are right-aligned, so cells whose
    right edges are close are one column."""
    columns: list[list[_Cell]] = []
    for cell in sorted(values, key=lambda c: c.end):
        if columns and cell.end - columns[-1][-1].end <= _ALIGN:
            columns[-1].append(cell)
        else:
            columns.append([cell])
    return [(min(c.start for c in column), max(c.end for c in column)) for column in columns]


def _nearest(columns: list[tuple[int, int]], end: int) -> int:
    return min(range(len(columns)), key=lambda index: abs(columns[index][1] - end))


def _header(
    lines: list[str], first_row: int, columns: list[tuple[int, int]]
) -> tuple[int, list[str] | None, list[str]]:
    """The column headers above a table's first row: up to four lines whose text lies over the value columns
    (none in the label column on the left), above a few label lines ("Net sales:") that head the first rows.
    A header cell spanning several columns ("Three Months Ended" over two dates) names each column nearer to it
    than to the line's other cells. Returns (first header line, the column names, the label lines)."""
    left = columns[0][0] - 8
    found: list[list[_Cell]] = []
    leading: list[str] = []
    i = first_row - 1
    while i >= 0 and len(found) < 4:
        cells = _cells(lines[i])
        if not cells:
            if found:
                break
            i -= 1
            continue
        if cells[0].start < left:
            if found or len(cells) > 1 or len(leading) >= _MAX_LABELS:
                break
            leading.insert(0, cells[0].text)
            i -= 1
            continue
        found.insert(0, cells)
        i -= 1
    if not found:
        return first_row, None, []
    names = [""] * len(columns)
    for cells in found:
        for index, (start, end) in enumerate(columns):
            center = (start + end) / 2
            nearest = min(cells, key=lambda cell: abs(cell.center - center))
            names[index] = f"{names[index]} {nearest.text}".strip()
    return i + 1, names, leading


def _paragraphs(lines: list[str]) -> Iterator[str]:
    """Prose lines of layout text as paragraphs: blank lines separate them, spacing is collapsed (and between
    Chinese characters removed: layout mode pads by width)."""
    paragraph: list[str] = []
    for line in [*lines, ""]:
        words = " ".join(line.split())
        if words:
            paragraph.append(_CJK_GAP.sub("", words))
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []

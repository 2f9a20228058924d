"""PDF text engines compared: pypdf (today's), pypdfium2, pdfminer.six; correctness first, then seconds per page.

    .venv/bin/python bench/pdf_text.py --sec ../shared/eval-data/sec-10q/docs --extra-path /tmp/pdfextra --tables

pdfminer.six is not a dependency: install it apart (``pip install --target /tmp/pdfextra pdfminer.six``) and name
that folder with ``--extra-path`` (appended to ``sys.path``, so the venv's own packages win); without it the
benchmark runs with the two others.

1. The SEC 10-Q PDFs (real filings: multi-column pages, financial tables), every page through every engine in this
   process, files in turn and engines in rotation: seconds per page against pypdf, visible characters, the share
   of pages with text and with text ``load_document`` would keep (else it sends the page to OCR), junk (characters
   that are not text-like; ``(cid:N)``, U+FFFD, U+FFFE marks), agreement with the other engines (character
   similarity of the whitespace-collapsed page text, rapidfuzz's normalized Indel ratio; Jaccard of the page's
   word sets), and the numbers of the tables: tokens like ``1,234.5`` per engine, and the share of the consensus
   tokens and words (those at least two engines found on the page, as multisets) that each engine found, with
   the words each engine misses most often.
2. Chinese PDFs written here with known text, one case per font setup: a TrueType subset (reportlab) and a CID
   font (Type0/CIDFontType2, Identity-H, subset, written by pdfium) with their ToUnicode maps, the same without
   them (and the CID one also without the font's own cmap: nothing left to map glyphs back), and reportlab's
   non-embedded STSong-Light (predefined UniGB-UCS2-H CMap, what tests/documents.py writes). Per engine: character
   error rate (Levenshtein over the truth's length, whitespace ignored), share of CJK characters in the output,
   and whether ``load_document`` would keep the text (mojibake that looks like text is the silent failure).
3. ``--tables``: pypdf's ``extraction_mode="layout"`` against the plain mode on the SEC pages with most numbers:
   seconds per page on the whole first filing of each company, and whether table rows stay on one line with the
   columns aligned (see :func:`row_stats`), the size of the text, the other engines alongside; then an excerpt of
   one table in both modes.
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
WORD = re.compile(r"\w+")
CJK = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")
ROW_TAIL = re.compile(r"[\d,.\s$()%—–-]*$")
CID_MARKER = re.compile(r"\(cid:\d+\)")

CHINESE_PAGES = [
    [
        "第一章 总则",
        "本规定适用于公司全体员工，自二零二四年一月一日起施行。",
        "员工每年享有十五天带薪年假，需提前两周向主管申请。",
    ],
    ["第二章 财务", "2023年第三季度营业收入为1,234.5亿元，同比增长8.6%。", "净利润为356.2亿元；研发投入占收入的12%。"],
    [
        "第三章 设备",
        "咖啡机每三十天需要除垢一次，请使用随附的除垢粉。",
        "打印机卡纸时，请先关闭电源，再打开后盖取出纸张。",
    ],
]

Engine = Callable[[Path], list[str]]


def pypdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader

    from ingest.load import _relaxed_pdf_limits

    with _relaxed_pdf_limits():
        return [page.extract_text() or "" for page in PdfReader(path).pages]


def pdfium_pages(path: Path) -> list[str]:
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    try:
        texts = []
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return texts
    finally:
        document.close()


def pdfminer_pages(path: Path) -> list[str]:
    from pdfminer.high_level import extract_text

    return extract_text(str(path)).split("\f")[:-1]  # TextConverter ends every page with a form feed


def engines() -> dict[str, Engine]:
    """The engines importable here; their modules imported now, so no timing below pays for an import."""
    import pypdf  # noqa: F401
    import pypdfium2  # noqa: F401

    import ingest.load  # noqa: F401

    found: dict[str, Engine] = {"pypdf": pypdf_pages, "pypdfium2": pdfium_pages}
    try:
        import pdfminer.high_level  # noqa: F401
    except ImportError:
        print("pdfminer.six not importable (see --extra-path): left out", flush=True)
    else:
        found["pdfminer"] = pdfminer_pages
    return found


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("pypdf", "pypdfium2", "pdfminer.six"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} -")
    return ", ".join(parts)


def normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def collapse(text: str) -> str:
    return " ".join(text.split())


def visible(text: str) -> str:
    return "".join(text.split())


def numbers(text: str) -> Counter[str]:
    return Counter(token.rstrip(",") for token in NUMBER.findall(text))


def word_counts(text: str) -> Counter[str]:
    return Counter(WORD.findall(text.lower()))


def consensus(tokens: dict[str, Counter[str]]) -> Counter[str]:
    """The tokens at least two engines found (as many times as the second most), or one engine's when alone."""
    if len(tokens) == 1:
        return next(iter(tokens.values())).copy()
    every: Counter[str] = Counter()
    for counter in tokens.values():
        every |= counter
    return Counter({token: sorted((c[token] for c in tokens.values()), reverse=True)[1] for token in every})


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def similarity(a: str, b: str) -> float:
    from rapidfuzz.distance import Indel

    return Indel.normalized_similarity(a, b) if a or b else 1.0


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{cell:<{widths[0]}}" if i == 0 else f"{cell:>{widths[i]}}" for i, cell in enumerate(header))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{cell:<{widths[0]}}" if i == 0 else f"{cell:>{widths[i]}}" for i, cell in enumerate(row)))
    print(flush=True)


# --- 1. SEC 10-Qs -------------------------------------------------------------------------------------------------


def run_sec(files: list[Path], found: dict[str, Engine]) -> dict[str, dict[Path, list[str]]]:
    from ingest.load import _TEXTLIKE, _usable_text

    names = list(found)
    seconds = dict.fromkeys(names, 0.0)
    texts: dict[str, dict[Path, list[str]]] = {name: {} for name in names}
    for turn, path in enumerate(files):
        order = names[turn % len(names) :] + names[: turn % len(names)]  # rotation: no engine always goes first
        for name in order:
            gc.collect()
            started = time.perf_counter()
            extracted = found[name](path)
            seconds[name] += time.perf_counter() - started
            texts[name][path] = [normalize(text) for text in extracted]
    counts = {path: len(texts["pypdf"][path]) for path in files}
    for name in names:
        for path in files:
            if len(texts[name][path]) != counts[path]:
                print(f"!! {name}: {len(texts[name][path])} pages in {path.name}, pypdf {counts[path]}")
                texts[name][path] = (texts[name][path] + [""] * counts[path])[: counts[path]]
    total_pages = sum(counts.values())
    print(f"== SEC 10-Qs: {len(files)} files, {total_pages} pages ({versions()})\n")

    pages = [(path, index) for path in files for index in range(counts[path])]
    pair_sim: dict[tuple[str, str], list[float]] = {pair: [] for pair in combinations(names, 2)}
    pair_words: dict[tuple[str, str], list[float]] = {pair: [] for pair in combinations(names, 2)}
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    agreed = {"numbers": 0, "words": 0}
    found_agreed = {kind: dict.fromkeys(names, 0) for kind in agreed}
    missed: dict[str, Counter[str]] = {name: Counter() for name in names}
    for path, index in pages:
        page = {name: texts[name][path][index] for name in names}
        flat = {name: collapse(text) for name, text in page.items()}
        words = {name: set(WORD.findall(text.lower())) for name, text in page.items()}
        for a, b in pair_sim:
            value = similarity(flat[a], flat[b])
            pair_sim[a, b].append(value)
            pair_words[a, b].append(jaccard(words[a], words[b]))
            if value < worst.get((a, b), (2.0, ""))[0]:
                worst[a, b] = (value, f"{path.name} p{index + 1}")
        for kind, tokenize in (("numbers", numbers), ("words", word_counts)):
            tokens = {name: tokenize(text) for name, text in page.items()}
            agreement = consensus(tokens)
            agreed[kind] += sum(agreement.values())
            for name in names:
                found_agreed[kind][name] += sum((tokens[name] & agreement).values())
                if kind == "words":
                    missed[name] += agreement - tokens[name]

    rows = []
    base = seconds["pypdf"]
    for name in names:
        every_page = [texts[name][path][index] for path, index in pages]
        chars = sum(len(visible(text)) for text in every_page)
        shown = "".join(visible(text) for text in every_page)
        junk = sum(1 for char in shown if not _TEXTLIKE.match(char))
        markers = sum(
            len(CID_MARKER.findall(text)) + text.count("\ufffd") + text.count("\ufffe") for text in every_page
        )
        with_text = sum(1 for text in every_page if len(visible(text)) >= 8)
        usable = sum(1 for text in every_page if _usable_text(text))
        mine = [pair for pair in pair_sim if name in pair]
        sim = sum(sum(pair_sim[pair]) for pair in mine) / (len(mine) * len(pages)) if mine else 1.0
        jac = sum(sum(pair_words[pair]) for pair in mine) / (len(mine) * len(pages)) if mine else 1.0
        token_count = sum(sum(numbers(text).values()) for text in every_page)
        rows.append(
            [
                name,
                f"{seconds[name] / total_pages * 1000:.1f}",
                f"{seconds[name] / base:.2f}",
                f"{chars / 1000:.0f}k",
                f"{with_text / len(pages):.1%}",
                f"{usable / len(pages):.1%}",
                f"{junk / max(chars, 1):.2%}",
                str(markers),
                f"{sim:.3f}",
                f"{jac:.3f}",
                str(token_count),
                f"{found_agreed['numbers'][name] / max(agreed['numbers'], 1):.2%}",
                f"{found_agreed['words'][name] / max(agreed['words'], 1):.2%}",
            ]
        )
    table(
        ["engine", "ms/page", "t/pypdf", "chars", "text pg", "usable", "junk", "marks", "sim", "words",
         "numbers", "agreed #", "agreed w"],
        rows,
    )  # fmt: skip
    print("ms/page: total seconds / total pages (open + extract every page); t/pypdf: time against pypdf")
    print("text pg: pages with >= 8 visible characters; usable: pages ingest.load._usable_text keeps; junk: visible")
    print("characters that are not text-like; marks: (cid:N), U+FFFD, U+FFFE (pdfium's soft hyphen at line ends)")
    print("sim / words: mean over pages of the similarity to each other engine (whitespace-collapsed text;"
          " word-set Jaccard)")  # fmt: skip
    print(f"agreed # / w: share found of the number tokens ({agreed['numbers']}) and words ({agreed['words']}) that at"
          " least two engines found on the page (multisets)")  # fmt: skip
    for name in names:
        if missed[name]:
            common = ", ".join(f"{word} {count}" for word, count in missed[name].most_common(8))
            print(f"  {name} misses most often: {common}")
    print()
    pair_rows = []
    for pair in pair_sim:
        values = pair_sim[pair]
        pair_rows.append(
            [
                " ~ ".join(pair),
                f"{sum(values) / len(values):.3f}",
                f"{sorted(values)[len(values) // 2]:.3f}",
                f"{sum(pair_words[pair]) / len(values):.3f}",
                str(sum(1 for value in values if value < 0.9)),
                str(sum(1 for value in values if value < 0.5)),
                f"{worst[pair][0]:.3f} {worst[pair][1]}",
            ]
        )
    table(["pair", "sim mean", "median", "words", "<0.90", "<0.50", "worst page"], pair_rows)
    return texts


# --- 2. Chinese PDFs ------------------------------------------------------------------------------------------------


def reportlab_ttf(path: Path, font: str) -> None:
    """A TrueType subset (reportlab embeds simple-font subsets of the TTC's first face, each with a ToUnicode)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("BenchWQY", font, subfontIndex=0))
    _reportlab_pages(canvas.Canvas(str(path), pagesize=A4), "BenchWQY")


def reportlab_cid(path: Path) -> None:
    """reportlab's non-embedded Adobe CID font STSong-Light, encoding UniGB-UCS2-H (no ToUnicode)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    _reportlab_pages(canvas.Canvas(str(path), pagesize=A4), "STSong-Light")


def _reportlab_pages(pdf: Any, font: str) -> None:
    for lines in CHINESE_PAGES:
        pdf.setFont(font, 14)
        for row, line in enumerate(lines):
            pdf.drawString(72, 760 - 24 * row, line)
        pdf.showPage()
    pdf.save()


def pdfium_cid(path: Path, font: str) -> None:
    """A Type0 font, CIDFontType2 with Identity-H (CIDs are glyph ids) and a ToUnicode map, as pdfium writes it,
    of a fontTools subset of the TTC's first face."""
    import ctypes

    import pypdfium2
    import pypdfium2.raw as pdfium
    from fontTools import subset
    from fontTools.ttLib import TTFont

    face = TTFont(font, fontNumber=0)
    options = subset.Options()
    options.name_IDs = ["*"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join("".join(lines) for lines in CHINESE_PAGES))
    logging.getLogger("fontTools.subset").setLevel(logging.ERROR)
    subsetter.subset(face)
    buffer = io.BytesIO()
    face.save(buffer)
    data = buffer.getvalue()
    document = pypdfium2.PdfDocument.new()
    keep = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    handle = pdfium.FPDFText_LoadFont(document.raw, keep, len(data), pdfium.FPDF_FONT_TRUETYPE, True)
    assert handle, "pdfium could not load the font"
    for number, lines in enumerate(CHINESE_PAGES):
        page = pdfium.FPDFPage_New(document.raw, number, 595, 842)
        for row, line in enumerate(lines):
            text = pdfium.FPDFPageObj_CreateTextObj(document.raw, handle, 14.0)
            wide = (line + "\0").encode("utf-16-le")
            chars = ctypes.create_string_buffer(wide, len(wide))
            assert pdfium.FPDFText_SetText(text, ctypes.cast(chars, pdfium.FPDF_WIDESTRING))
            pdfium.FPDFPageObj_Transform(text, 1, 0, 0, 1, 72, 760 - 24 * row)
            pdfium.FPDFPage_InsertObject(page, text)
        assert pdfium.FPDFPage_GenerateContent(page)
        pdfium.FPDF_ClosePage(page)
    document.save(str(path))
    document.close()
    pdfium.FPDFFont_Close(handle)


def strip_maps(source: Path, target: Path, cmap: bool = False) -> int:
    """``source`` without its fonts' ToUnicode maps (and, with ``cmap``, without the embedded fonts' cmap tables:
    then nothing maps a glyph back to a character); returns how many maps were removed."""
    from fontTools.ttLib import TTFont
    from pypdf import PdfWriter
    from pypdf.generic import NameObject

    writer = PdfWriter(clone_from=str(source))
    removed = 0
    for page in writer.pages:
        resources: Any = page["/Resources"]
        fonts: Any = resources["/Font"]
        for reference in fonts.values():
            font = reference.get_object()
            if NameObject("/ToUnicode") in font:
                del font[NameObject("/ToUnicode")]
                removed += 1
            if not cmap:
                continue
            descendant: Any = font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
            program = descendant["/FontDescriptor"].get_object().get("/FontFile2")
            if program is None:
                continue
            program = program.get_object()
            face = TTFont(io.BytesIO(program.get_data()))
            if "cmap" in face:
                del face["cmap"]
                buffer = io.BytesIO()
                face.save(buffer)
                program.set_data(buffer.getvalue())
                removed += 1
    writer.write(str(target))
    return removed


def run_chinese(found: dict[str, Engine], font: str) -> None:
    from rapidfuzz.distance import Levenshtein

    from ingest.load import _usable_text

    print("== Chinese PDFs written here: 3 pages, 3 lines each, known text\n")
    truths = [visible("".join(lines)) for lines in CHINESE_PAGES]
    with tempfile.TemporaryDirectory(prefix="bench-pdf-text-") as scratch:
        folder = Path(scratch)
        cases: list[tuple[str, Path]] = []
        if Path(font).exists():
            ttf, cid = folder / "ttf.pdf", folder / "cid.pdf"
            reportlab_ttf(ttf, font)
            pdfium_cid(cid, font)
            strip_maps(ttf, folder / "ttf-bare.pdf")
            strip_maps(cid, folder / "cid-bare.pdf")
            strip_maps(cid, folder / "cid-nocmap.pdf", cmap=True)
            cases += [
                ("TrueType subset + ToUnicode (reportlab)", ttf),
                ("TrueType subset, no ToUnicode", folder / "ttf-bare.pdf"),
                ("CID Identity-H + ToUnicode (pdfium)", cid),
                ("CID Identity-H, no ToUnicode", folder / "cid-bare.pdf"),
                ("CID Identity-H, no ToUnicode, no cmap", folder / "cid-nocmap.pdf"),
            ]
        else:
            print(f"{font} missing: only the non-embedded CID font (apt-get install fonts-wqy-zenhei)")
        reportlab_cid(folder / "stsong.pdf")
        cases.append(("CID STSong-Light, not embedded", folder / "stsong.pdf"))

        rows = []
        samples = []
        for label, path in cases:
            for name, engine in found.items():
                try:
                    pages = [normalize(text) for text in engine(path)]
                except Exception as error:  # an engine that fails on a case is a result too
                    rows.append([label, name, "error", "", "", "", type(error).__name__])
                    continue
                pages = (pages + [""] * len(truths))[: len(truths)]
                outputs = [visible(text) for text in pages]
                errors = sum(Levenshtein.distance(truth, out) for truth, out in zip(truths, outputs, strict=True))
                total = sum(len(truth) for truth in truths)
                shown = "".join(outputs)
                cjk = sum(1 for char in shown if CJK.match(char))
                usable = sum(1 for text in pages if _usable_text(text))
                rows.append(
                    [
                        label,
                        name,
                        f"{errors / total:.3f}",
                        str(len(shown)),
                        f"{cjk / max(len(shown), 1):.0%}",
                        f"{usable}/{len(pages)}",
                        "" if errors == 0 else repr(collapse(pages[1])[:28]),
                    ]
                )
                if errors:
                    samples.append(f"{label} / {name}: {collapse(pages[1])[:60]!r}")
        table(["case", "engine", "CER", "chars", "CJK", "kept", "page 2 when wrong"], rows)
        print(f"truth: {sum(len(truth) for truth in truths)} characters; page 2 is {truths[1]!r}")
        print("kept: pages ingest.load._usable_text accepts (the others go to OCR)\n")


# --- 3. pypdf layout mode on tables ---------------------------------------------------------------------------------


def row_stats(texts: list[str]) -> tuple[int, float, float, float]:
    """Table rows: lines with >= 2 numbers and nothing but numbers, $, %, dashes and brackets from the first number
    on (a label, then the cells); numbers per row, share of all numbers on rows, and the share of rows whose
    numbers all end (right edge) within two columns of a number on the row before or after (at most 3 lines
    away): columns that line up as in the printed table (layout mode rounds glyph positions to a character grid,
    and percent cells sit a column or two off the dollar cells; a row with dashes in some cells lines up with a
    full one)."""
    rows = numbered = on_rows = aligned = 0
    for text in texts:
        ends: list[tuple[int, set[int], list[int]]] = []
        for number, line in enumerate(text.split("\n")):
            matches = list(NUMBER.finditer(line))
            found = [match.end() for match in matches]
            numbered += len(found)
            if len(found) >= 2 and ROW_TAIL.match(line[matches[0].start() :]):
                rows += 1
                on_rows += len(found)
                ends.append((number, set(found), found))
        for at, (number, _, found) in enumerate(ends):
            near = [
                columns
                for other, columns, _ in ends[max(0, at - 1) : at + 2]
                if other != number and abs(other - number) <= 3
            ]
            grid = [{column + shift for column in columns for shift in range(-2, 3)} for columns in near]
            aligned += any(set(found) <= columns for columns in grid)
    return rows, on_rows / max(rows, 1), on_rows / max(numbered, 1), aligned / max(rows, 1)


def run_tables(
    files: list[Path], found: dict[str, Engine], per_file: int, sec: dict[str, dict[Path, list[str]]]
) -> None:
    from pypdf import PdfReader

    from ingest.load import _relaxed_pdf_limits

    print(f"== --tables: pypdf layout mode, {len(files)} files ({', '.join(path.name for path in files)})\n")
    plain_seconds = layout_seconds = 0.0
    pages = 0
    chosen: list[tuple[Path, int]] = []
    layout_texts: dict[tuple[Path, int], str] = {}
    plain_texts: dict[tuple[Path, int], str] = {}
    with _relaxed_pdf_limits():
        for turn, path in enumerate(files):
            plain: list[str] = []
            layout: list[str] = []
            modes = ["plain", "layout"] if turn % 2 == 0 else ["layout", "plain"]
            for mode in modes:
                gc.collect()
                reader = PdfReader(path)  # fresh: no cached page content from the other mode
                started = time.perf_counter()
                if mode == "plain":
                    plain = [page.extract_text() or "" for page in reader.pages]
                    plain_seconds += time.perf_counter() - started
                else:
                    layout = [page.extract_text(extraction_mode="layout") or "" for page in reader.pages]
                    layout_seconds += time.perf_counter() - started
            pages += len(plain)
            densest = sorted(range(len(plain)), key=lambda index: -sum(numbers(plain[index]).values()))[:per_file]
            for index in sorted(densest):
                chosen.append((path, index))
                plain_texts[path, index] = normalize(plain[index])
                layout_texts[path, index] = normalize(layout[index])
    print(f"pypdf on all {pages} pages of these files: plain {plain_seconds / pages * 1000:.1f} ms/page,"
          f" layout {layout_seconds / pages * 1000:.1f} ms/page"
          f" (layout / plain {layout_seconds / plain_seconds:.2f})")  # fmt: skip
    print(f"table pages: the {per_file} pages of each file with most numbers in the plain text: "
          + ", ".join(f"{path.name.split()[-1][:-4]} p{index + 1}" for path, index in chosen) + "\n")  # fmt: skip

    candidates: dict[str, list[str]] = {
        "pypdf plain": [plain_texts[key] for key in chosen],
        "pypdf layout": [layout_texts[key] for key in chosen],
    }
    for name in found:
        if name == "pypdf":
            continue
        if name in sec and all(path in sec[name] for path, _ in chosen):
            candidates[name] = [sec[name][path][index] for path, index in chosen]
        else:
            documents = {path: [normalize(text) for text in found[name](path)] for path in {p for p, _ in chosen}}
            candidates[name] = [documents[path][index] for path, index in chosen]
    consensus = [numbers(text) for text in candidates["pypdf plain"]]
    rows = []
    for name, texts in candidates.items():
        row_lines, per_row, share, aligned = row_stats(texts)
        kept = sum(sum((numbers(text) & want).values()) for text, want in zip(texts, consensus, strict=True))
        width = max(len(line) for text in texts for line in text.split("\n"))
        rows.append(
            [
                name,
                str(sum(text.count("\n") + 1 for text in texts)),
                str(width),
                str(sum(len(text) for text in texts)),
                str(sum(len(collapse(text)) for text in texts)),
                str(row_lines),
                f"{per_row:.2f}",
                f"{share:.0%}",
                f"{aligned:.0%}",
                f"{kept / max(sum(sum(c.values()) for c in consensus), 1):.1%}",
            ]
        )
    table(
        [
            "text",
            "lines",
            "max width",
            "chars",
            "collapsed",
            "rows",
            "numbers/row",
            "on rows",
            "aligned",
            "numbers kept",
        ],
        rows,
    )
    print("rows: lines with a label (or none) then >= 2 number cells and nothing else; on rows: share of all numbers")
    print("on such a line; aligned: rows whose numbers all end within 2 columns of numbers on a neighbouring row")
    print("(<= 3 lines away); chars: length of the text as extracted; collapsed: with whitespace runs as one space;")
    print("numbers kept: number tokens of pypdf plain found on the same page (multiset)\n")

    path, index = max(chosen, key=lambda key: sum(numbers(plain_texts[key]).values()))
    layout_lines = layout_texts[path, index].split("\n")
    start = next((i for i, line in enumerate(layout_lines) if len(NUMBER.findall(line)) >= 3), 0)
    print(f"-- excerpt, {path.name} p{index + 1}, layout mode (trailing spaces cut):")
    for line in layout_lines[max(0, start - 4) : start + 12]:
        print("| " + line.rstrip()[:170])
    plain_lines = plain_texts[path, index].split("\n")
    row = next((line for line in layout_lines[start:] if NUMBER.split(line)[0].strip(" $")), layout_lines[start])
    label = NUMBER.split(row)[0].strip(" $")  # the first row with a label: find it in the plain text
    at = next((i for i, line in enumerate(plain_lines) if label and line.startswith(label) and NUMBER.search(line)), 0)
    print("-- the same place, plain mode:")
    for line in plain_lines[max(0, at - 4) : at + 12]:
        print("| " + line.rstrip()[:170])
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sec", type=Path, default=Path(__file__).resolve().parents[2] / "shared/eval-data/sec-10q/docs"
    )
    parser.add_argument("--sec-files", type=int, default=0, help="how many 10-Qs (0: all)")
    parser.add_argument("--font", default="/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
    parser.add_argument("--extra-path", type=Path, help="a folder with pdfminer.six in it (appended to sys.path)")
    parser.add_argument("--tables", action="store_true", help="also pypdf's layout mode on table pages")
    parser.add_argument("--table-pages", type=int, default=2, help="table pages per file for --tables")
    args = parser.parse_args()

    if args.extra_path:
        sys.path.append(str(args.extra_path))
    for noisy in ("pypdf", "pdfminer"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    found = engines()
    files = sorted(args.sec.glob("*.pdf"))
    if args.sec_files:
        files = files[: args.sec_files]
    sec = run_sec(files, found) if files else {}
    run_chinese(found, args.font)
    if args.tables and files:
        one_each: dict[str, Path] = {}
        for path in files:
            one_each.setdefault(path.stem.split()[-1], path)  # the first filing of each company
        run_tables(list(one_each.values()), found, args.table_pages, sec)


if __name__ == "__main__":
    main()

"""Documents the tests write themselves: every format and encoding the product promises, and bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GBK_TEXT = "第一章 总则\n\n本规定适用于公司全体员工。员工每年享有带薪年假十五天！请假须提前三天申请。\n"
UTF16_TEXT = "季度报告\n\n本季度营业收入为一百二十亿元，同比增长百分之八。净利润保持稳定。\n"
BIG5_TEXT = "臺灣高鐵公司公告：春節期間加開列車一百班次。旅客請提早購票。\n"

MARKDOWN = """# 产品手册

本手册介绍熊猫牌咖啡机的使用方法。请在使用前仔细阅读。

## 安装

将咖啡机放在平稳的台面上。接通电源后，指示灯会亮起。

### 注意事项

不要在潮湿的环境中使用。Do not immerse the machine in water.

## Cleaning

Descale the machine every 30 days. Use the bundled descaling powder only.
"""

HTML = """<!doctype html><html><head><meta charset="utf-8"><title>价格表</title></head><body>
<h1>水果价格</h1>
<p>以下是本周的水果价格，单位为元每公斤。</p>
<table>
<tr><th>水果</th><th>价格</th><th>产地</th></tr>
<tr><td>苹果</td><td>12</td><td>烟台</td></tr>
<tr><td>荔枝</td><td>38</td><td>增城</td></tr>
</table>
<h2>说明</h2>
<p>价格每周一更新。</p>
</body></html>
"""

PDF_PAGES = [
    "长江是中国第一长河，全长约六千三百公里。",
    "黄河是中国第二长河，被称为中华民族的母亲河。",
]

DOCX_PARAGRAPHS = [
    ("heading", "会议纪要"),
    ("text", "二零二四年三月五日，项目组召开了第一次例会。"),
    ("heading2", "决议"),
    ("text", "项目预算批准为三百万元。下次会议定于四月一日举行。"),
]


def write_pdf(path: Path, pages: list[str]) -> None:
    """A real PDF with a Chinese CID font, one text per page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        pdf.setFont("STSong-Light", 14)
        pdf.drawString(72, 760, text)
        pdf.showPage()
    pdf.save()


def write_docx(path: Path, paragraphs: list[tuple[str, str]]) -> None:
    import docx

    document = docx.Document()
    for kind, text in paragraphs:
        if kind == "heading":
            document.add_heading(text, level=1)
        elif kind == "heading2":
            document.add_heading(text, level=2)
        else:
            document.add_paragraph(text)
    document.save(str(path))


def write_corpus(folder: Path) -> dict[str, Path]:
    """Good documents in every promised format and encoding, plus one bad file of each kind.

    Returns the paths by role.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    files = {
        "gbk": folder / "规定-gbk.txt",
        "utf16": folder / "report-utf16.txt",
        "big5": folder / "sub" / "big5.txt",
        "markdown": folder / "manual.md",
        "html": folder / "prices.html",
        "pdf": folder / "rivers.pdf",
        "docx": folder / "minutes.docx",
        "corrupt_pdf": folder / "broken.pdf",
        "empty": folder / "empty.txt",
        "binary_txt": folder / "sub" / "image.txt",
    }
    files["gbk"].write_bytes(GBK_TEXT.encode("gbk"))
    files["utf16"].write_bytes(UTF16_TEXT.encode("utf-16"))  # with BOM
    files["big5"].write_bytes(BIG5_TEXT.encode("big5"))
    files["markdown"].write_text(MARKDOWN, encoding="utf-8")
    files["html"].write_text(HTML, encoding="utf-8")
    write_pdf(files["pdf"], PDF_PAGES)
    write_docx(files["docx"], DOCX_PARAGRAPHS)
    files["corrupt_pdf"].write_bytes(b"%PDF-1.7\n1 0 obj <<>> garbage \x00\x01\x02 not a pdf at all")
    files["empty"].write_bytes(b"")
    files["binary_txt"].write_bytes(bytes(range(256)) * 40)
    (folder / ".hidden.txt").write_text("这个文件是隐藏的，不应被收录。", encoding="utf-8")
    return files


GOOD_ROLES = ("gbk", "utf16", "big5", "markdown", "html", "pdf", "docx")
BAD_ROLES = ("corrupt_pdf", "empty", "binary_txt")


def ingest_into_store(root: Path, documents: dict[str, str], embedder: Any) -> tuple[Any, Any]:
    """Write ``documents`` (name -> text) under ``root/docs`` and ingest them into a real store with a BM25
    index beside it (``root/chroma``, ``root/lexical.sqlite3``) that keeps each chunk's Mixtral token count, as the
    composition root wires it; returns (ChunkStore, LexicalIndex)."""
    from ingest.pipeline import IngestPipeline
    from rag.llm.tokenizer import mixtral_token_counts
    from rag.retrieval.lexical import LexicalIndex
    from rag.retrieval.store import ChunkStore, connect_chroma

    folder = root / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (folder / name).write_text(text, encoding="utf-8")
    store = ChunkStore(connect_chroma(path=root / "chroma"), "docs")
    lexical = LexicalIndex(root / "lexical.sqlite3", count_tokens=mixtral_token_counts)
    IngestPipeline(store, embedder, lexical=lexical, count_tokens=mixtral_token_counts).run([folder])
    return store, lexical

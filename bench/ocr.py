"""OCR benchmark: seconds per page (scanned pages and text pages apart), peak RSS against the page count, CER.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ocr.py --pages 200 --sec ../shared/eval-data/sec-10q/docs

1. A generated scan PDF (every page a picture of two lines of Chinese and English, 150 dpi, blur and noise) of
   ``--pages`` pages, and its first tenth as a short one: ``load_document`` with OCR on each, seconds per page and
   the peak RSS of each run (sampled with psutil every 0.1 s): flat means one page at a time.
2. The character error rate of the OCR path on those pages (spaces ignored).
3. The SEC 10-Q PDFs (text layers): ``load_document`` with OCR on (pages with text must stay on the text path)
   against plain pypdf ``extract_text`` of every page, timed in the same run.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINES = [
    ("员工每年享有十五天带薪年假，需提前两周向主管申请。", "The warranty covers two years of repairs."),
    ("合同自双方签字之日起生效，有效期三年。", "Invoices are paid within thirty days."),
    ("咖啡机每三十天需要除垢一次。", "Passwords must be at least fourteen characters long."),
]


class PeakRss:
    """Peak resident memory of this process while the block runs (MiB), sampled every 0.1 s."""

    def __enter__(self) -> PeakRss:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.1)

    def __exit__(self, *exc: Any) -> None:
        self._running = False
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def scan_pdf(path: Path, pages: int, font: str) -> list[str]:
    """Write a scanned PDF of ``pages`` pages; returns each page's text."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pictures = []
    for index, (chinese, english) in enumerate(LINES):
        image = Image.new("L", (1240, 260), 255)
        draw = ImageDraw.Draw(image)
        draw.text((60, 60), chinese, font=ImageFont.truetype(font, 30), fill=25)
        draw.text((60, 140), english, font=ImageFont.truetype(font, 30), fill=25)
        image = image.rotate(1.0, expand=True, fillcolor=255).filter(ImageFilter.GaussianBlur(0.6))
        noise = random.Random(index)
        pixels = image.load()
        assert pixels is not None
        for _ in range(image.width * image.height // 250):
            pixels[noise.randrange(image.width), noise.randrange(image.height)] = noise.choice((0, 90, 200))
        picture = path.parent / f"line{index}.png"
        image.save(picture)
        pictures.append(picture)
    pdf = canvas.Canvas(str(path), pagesize=A4)
    texts = []
    for page in range(pages):
        which = page % len(LINES)
        pdf.drawImage(str(pictures[which]), 40, 560, width=520, height=520 * 270 / 1250)
        pdf.showPage()
        texts.append("".join(LINES[which]))
    pdf.save()
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument(
        "--sec", type=Path, default=Path(__file__).resolve().parents[2] / "shared/eval-data/sec-10q/docs"
    )
    parser.add_argument("--sec-files", type=int, default=4, help="how many 10-Qs (0: none)")
    parser.add_argument("--font", default="/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
    args = parser.parse_args()

    from rapidfuzz.distance import Levenshtein

    from ingest.load import load_document
    from ingest.ocr import OcrEngine

    engine = OcrEngine()
    engine.warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-ocr-") as scratch:
        folder = Path(scratch)
        short, long = folder / "short.pdf", folder / "long.pdf"
        short_texts = scan_pdf(short, max(2, args.pages // 10), args.font)
        long_texts = scan_pdf(long, args.pages, args.font)
        results = {}
        for name, path, texts in (("short", short, short_texts), ("long", long, long_texts)):
            gc.collect()
            with PeakRss() as rss:
                started = time.perf_counter()
                document = load_document(path, ocr=engine)
                seconds = time.perf_counter() - started
            found = {page: "" for page in range(1, len(texts) + 1)}
            for element in document.elements:
                found[element.page or 0] = found.get(element.page or 0, "") + element.text
            errors = sum(
                Levenshtein.distance("".join(t.split()), "".join(found[i + 1].split())) for i, t in enumerate(texts)
            )
            cer = errors / sum(len("".join(t.split())) for t in texts)
            results[name] = (len(texts), seconds, rss.mib, cer, len(document.ocr_pages))
            print(f"scan PDF, {len(texts):4} pages: {seconds / len(texts):.2f} s/page, peak RSS {rss.mib:.0f} MiB, "
                  f"CER {cer:.4f}, {len(document.ocr_pages)} pages read by OCR", flush=True)  # fmt: skip
        growth = results["long"][2] - results["short"][2]
        print(f"peak RSS, {results['long'][0]} pages against {results['short'][0]}: {growth:+.0f} MiB")

    sec = sorted(args.sec.glob("*.pdf"))[: args.sec_files] if args.sec_files else []
    if sec:
        from pypdf import PdfReader

        pages = ours = plain = 0.0
        scanned = tables = rows = 0
        for path in sec:
            started = time.perf_counter()
            document = load_document(path, ocr=engine)
            ours += time.perf_counter() - started
            scanned += len(document.ocr_pages)
            found = [element for element in document.elements if element.kind == "table"]
            tables += len(found)
            rows += sum(element.text.count("\n") for element in found)  # lines below the header
            started = time.perf_counter()
            reader = PdfReader(path)
            for page in reader.pages:
                page.extract_text()
            plain += time.perf_counter() - started
            pages += len(reader.pages)
        print(f"SEC 10-Qs, {len(sec)} files, {pages:.0f} pages: ours (OCR on) {ours / pages:.3f} s/page, "
              f"plain pypdf {plain / pages:.3f} s/page (ours / plain {ours / plain:.2f}); "
              f"{scanned} pages went to OCR; {tables} tables with column headers, {rows} rows")  # fmt: skip


if __name__ == "__main__":
    main()

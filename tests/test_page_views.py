"""Page views over a real store: a PDF ingested here (real Chroma, the bundled embedder, pypdfium2 boxes), its
cited page rendered with the passage highlighted (rag.app.pages and `GET /v1/documents/{id}/pages/{n}`), the
highlight checked against the passage's own text boxes as pdfium reports them; a Markdown passage in its text;
two scoped keys (another key's document is a 404); a store built before boxes existed. Answers come from the
scripted backend (tests/fakes.py): the sources' links are the subject, not the model's words."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rag.app.access import hash_key
from rag.app.library import document_id
from rag.app.root import Components
from rag.errors import NotFoundError, RequestError
from rag.server.app import ServeOptions, create_app
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import scripted_llm

MANUALS, OTHER = "manuals", "other"
MANUALS_KEY, OTHER_KEY = "manuals-key-3c9d1e", "other-key-8f02aa"
WARRANTY = [
    "The warranty lasts two years from the day of purchase.",
    "It covers every part of the machine except the battery.",
    "Claims are made at the shop where the machine was bought.",
]
CLEANING = [
    "Descale the coffee machine every thirty days with citric acid.",
    "Rinse the water tank twice after descaling it.",
    "Never put the milk frother in the dishwasher.",
]
NOTES = (
    "# Office notes\n\nThe printer on the second floor jams when the paper is damp.\n\n"
    "Keep spare toner in the cupboard next to the kitchen. Order more when two are left.\n\n"
    "## Visitors\n\nVisitors sign in at the front desk and wear a badge at all times.\n"
)


def write_manual(path: Path) -> Path:
    """Two paragraphs far apart on page 1 (warranty at the top, cleaning lower down), a line on page 2."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setFont("Helvetica", 12)
    for row, line in enumerate(WARRANTY):
        pdf.drawString(72, 760 - 16 * row, line)
    for row, line in enumerate(CLEANING):
        pdf.drawString(72, 420 - 16 * row, line)
    pdf.showPage()
    pdf.setFont("Helvetica", 12)
    pdf.drawString(72, 760, "Page two holds the service addresses of the shops.")
    pdf.showPage()
    pdf.save()
    return path


def text_region(path: Path, page: int, needle: str) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom, points from the top-left) of ``needle`` on ``page`` as pdfium's own
    search reports it: the test's independent reading of where that text is."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(path))
    try:
        handle = pdf[page - 1]
        height = handle.get_height()
        textpage = handle.get_textpage()
        searcher = textpage.search(needle)
        found = searcher.get_next()
        assert found is not None, needle
        index, count = found
        boxes = [textpage.get_charbox(i) for i in range(index, index + count)]
        searcher.close()
        textpage.close()
    finally:
        pdf.close()
    return (
        min(b[0] for b in boxes),
        height - max(b[3] for b in boxes),
        max(b[2] for b in boxes),
        height - min(b[1] for b in boxes),
    )


def paragraph_region(path: Path, lines: list[str]) -> tuple[float, float, float, float]:
    """The region of a paragraph drawn on page 1: its lines' regions together."""
    regions = [text_region(path, 1, line) for line in lines]
    return (
        min(r[0] for r in regions),
        min(r[1] for r in regions),
        max(r[2] for r in regions),
        max(r[3] for r in regions),
    )


def highlighted_pixels(png: bytes) -> Any:
    """(x, y) of the pixels the highlight tinted (the translucent yellow over white paper: blue well under red and
    green), as a numpy array."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    ys, xs = np.nonzero((red > 200) & (green > 150) & (blue < red - 60))
    return np.stack([xs, ys], axis=1)


def inside(points: Any, region: tuple[float, float, float, float], scale: float, margin: float) -> Any:
    left, top, right, bottom = (edge * scale for edge in region)
    xs, ys = points[:, 0], points[:, 1]
    return (xs >= left - margin) & (xs <= right + margin) & (ys >= top - margin) & (ys <= bottom + margin)


@pytest.fixture(scope="module")
def data(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pages")
    (root / MANUALS).mkdir()
    (root / OTHER).mkdir()
    manual = write_manual(root / MANUALS / "manual.pdf")
    (root / MANUALS / "notes.md").write_text(NOTES, encoding="utf-8")
    secret = write_manual(root / OTHER / "secret.pdf")
    settings = Settings(data_dir=root / "data", embedding_model=BUNDLED_EMBEDDER, chunk_size=32, chunk_overlap=0)
    components = Components(settings, use_llm=False)
    components.share_embedder(embedder)
    for collection in (MANUALS, OTHER):
        report = components.ingest_pipeline(collection).run([root / collection])
        assert not report.files_failed
    keys = root / "keys.toml"
    keys.write_text(
        f'[keys.manuals-team]\nkey_sha256 = "{hash_key(MANUALS_KEY)}"\ncollections = ["{MANUALS}"]\n\n'
        f'[keys.other-team]\nkey_sha256 = "{hash_key(OTHER_KEY)}"\ncollections = ["{OTHER}"]\n',
        encoding="utf-8",
    )
    return {"settings": settings, "manual": manual, "secret": secret, "keys": keys, "root": root}


def chunk_with(components: Components, collection: str, path: Path, needle: str) -> tuple[str, int]:
    """(id, page) of the chunk of ``path`` whose text holds ``needle``."""
    for chunk in components.lexical_index(collection).chunks_of_files([str(path)]):
        if needle in chunk.text:
            return chunk.chunk_id, chunk.page or 1
    raise AssertionError(f"no chunk holds {needle!r}")


@pytest.fixture(scope="module")
def components(data: dict[str, Any], embedder: Any) -> Components:
    settings = data["settings"].model_copy(update={"api_keys_file": data["keys"]})
    components = Components(settings, llm=scripted_llm())
    components.share_embedder(embedder)
    return components


@pytest.fixture(scope="module")
def http(components: Components) -> Iterator[TestClient]:
    with TestClient(create_app(components, ServeOptions.from_components(components, warm_up=False))) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_highlight_lies_over_the_passage_not_the_other_paragraph(
    components: Components, data: dict[str, Any]
) -> None:
    manual: Path = data["manual"]
    chunk_id, page = chunk_with(components, MANUALS, manual, "descaling")
    assert page == 1
    views = components.page_views()
    image = views.page_image(document_id(str(manual)), 1, [chunk_id], [MANUALS])
    assert (image.page, image.pages, image.width) == (1, 2, components.settings.page_view_width)
    assert image.highlighted and all(box.page == 1 for box in image.highlighted)

    points = highlighted_pixels(image.png)
    assert len(points) > 500
    cleaning, warranty = paragraph_region(manual, CLEANING), paragraph_region(manual, WARRANTY)
    # the tint lies over the passage's paragraph (its lines, as pdfium reports them), over the passage's own
    # line, and nowhere near the other paragraph
    assert inside(points, cleaning, image.scale, margin=6).mean() > 0.95
    assert inside(points, text_region(manual, 1, "Rinse the water tank"), image.scale, margin=2).any()
    assert not inside(points, warranty, image.scale, margin=2).any()

    # the other paragraph's chunk lights the other place
    warranty_id, _ = chunk_with(components, MANUALS, manual, "warranty lasts")
    theirs = highlighted_pixels(views.page_image(document_id(str(manual)), 1, [warranty_id], [MANUALS]).png)
    assert inside(theirs, warranty, image.scale, margin=6).mean() > 0.95
    assert not inside(theirs, cleaning, image.scale, margin=2).any()

    # cached on disk under the data dir, bounded; a second call gives the same bytes
    cached = list((Path(components.settings.data_dir) / "page-cache").glob("*/*.png"))
    assert len(cached) >= 2
    assert views.page_image(document_id(str(manual)), 1, [chunk_id], [MANUALS]).png == image.png


def test_bad_page_chunk_and_document_are_named(components: Components, data: dict[str, Any]) -> None:
    views = components.page_views()
    doc = document_id(str(data["manual"]))
    with pytest.raises(RequestError, match=r"page: 3 is not a page of manual\.pdf") as bad_page:
        views.page_image(doc, 3, [], [MANUALS])
    assert bad_page.value.param == "page"
    with pytest.raises(RequestError, match=r"highlight: 'nope' is not a chunk of manual\.pdf") as bad_chunk:
        views.page_image(doc, 1, ["nope"], [MANUALS])
    assert bad_chunk.value.param == "highlight"
    secret_chunk, _ = chunk_with(components, OTHER, data["secret"], "descaling")
    with pytest.raises(RequestError):  # a chunk of another document is not highlighted on this one
        views.page_image(doc, 1, [secret_chunk], [MANUALS, OTHER])
    with pytest.raises(NotFoundError):  # a document of a collection the caller cannot read does not exist
        views.page_image(document_id(str(data["secret"])), 1, [], [MANUALS])
    with pytest.raises(NotFoundError):
        views.page_image("doc-" + "0" * 24, 1, [], [MANUALS, OTHER])


def test_api_page_image_and_its_links(http: TestClient, data: dict[str, Any]) -> None:
    found = http.post(
        "/v1/chunks", json={"model": f"rag-{MANUALS}", "query": "rinse the water tank after descaling", "k": 8},
        headers=bearer(MANUALS_KEY),
    )  # fmt: skip
    assert found.status_code == 200, found.text
    chunks = found.json()["data"]
    pdf_chunk = next(c for c in chunks if c["file_name"] == "manual.pdf" and "descaling" in c["text"])
    url = pdf_chunk["page_image_url"]
    assert url.startswith(f"http://testserver/v1/documents/{pdf_chunk['document_id']}/pages/{pdf_chunk['page']}?")
    assert f"highlight={pdf_chunk['id']}" in url and str(data["root"]) not in url  # ids, never a path
    path = url.removeprefix("http://testserver")

    page = http.get(path.split("&access=")[0], headers=bearer(MANUALS_KEY))
    assert page.status_code == 200 and page.headers["content-type"] == "image/png"
    assert page.headers["x-pages"] == "2"
    points = highlighted_pixels(page.content)
    scale = 1000 / 595.2756
    assert len(points) > 500
    assert inside(points, paragraph_region(data["manual"], CLEANING), scale, margin=6).mean() > 0.95
    assert not inside(points, paragraph_region(data["manual"], WARRANTY), scale, margin=2).any()

    # a browser opens the link as it is (signed for this key), without the header; the signature is for that path
    assert http.get(path).status_code == 200
    assert http.get(path.split("&access=")[0]).status_code == 401
    other_page = path.replace(f"/pages/{pdf_chunk['page']}", "/pages/2")
    assert http.get(other_page).status_code == 401

    md_chunk = next(c for c in chunks if c["file_name"] == "notes.md")
    assert "/passages/" in md_chunk["page_image_url"]
    view = http.get(md_chunk["page_image_url"].removeprefix("http://testserver"))
    assert view.status_code == 200 and view.headers["content-type"].startswith("text/html")
    marked = view.text.split('<mark id="rag-passage">', 1)[1].split("</mark>", 1)[0]
    assert marked and marked in md_chunk["text"].replace("&", "&amp;")
    assert "Office notes" in view.text or "printer" in view.text  # the text around the passage is there too


def test_api_errors_name_the_parameter_and_another_keys_document_is_404(http: TestClient, data: dict[str, Any]) -> None:
    doc = document_id(str(data["manual"]))
    for page, status in (("0", 400), ("x", 400), ("3", 400), ("1", 200)):
        response = http.get(f"/v1/documents/{doc}/pages/{page}", headers=bearer(MANUALS_KEY))
        assert response.status_code == status, response.text
        if status == 400:
            assert response.json()["error"]["param"] == "page"
    unknown = http.get(f"/v1/documents/{doc}/pages/1?highlight=nope", headers=bearer(MANUALS_KEY))
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "highlight"
    assert "nope" in unknown.json()["error"]["message"]
    passage = http.get(f"/v1/documents/{doc}/passages/nope", headers=bearer(MANUALS_KEY))
    assert passage.status_code == 400 and passage.json()["error"]["param"] == "chunk_id"

    secret = document_id(str(data["secret"]))
    hidden = http.get(f"/v1/documents/{secret}/pages/1", headers=bearer(MANUALS_KEY))
    assert hidden.status_code == 404 and hidden.json()["error"]["type"] == "not_found_error"
    assert OTHER not in hidden.json()["error"]["message"]
    assert http.get(f"/v1/documents/{secret}/pages/1", headers=bearer(OTHER_KEY)).status_code == 200
    assert http.get(f"/v1/documents/{doc}/pages/1", headers=bearer(OTHER_KEY)).status_code == 404
    assert http.get(f"/v1/documents/{doc}/pages/1?access=manuals-team.9999999999.00").status_code == 401


def test_answer_sources_and_citations_point_at_page_views(http: TestClient) -> None:
    question = {"messages": [{"role": "user", "content": "How often should the coffee machine be descaled?"}]}
    reply = http.post("/v1/chat/completions", json={"model": f"rag-{MANUALS}", **question},
                      headers=bearer(MANUALS_KEY))  # fmt: skip
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert message["sources"]
    for source in message["sources"]:
        url = source["page_image_url"]
        assert url.startswith(f"http://testserver/v1/documents/{source['document_id']}/")
        assert ("/pages/" in url) == (source["file_name"] == "manual.pdf")
        opened = http.get(url.removeprefix("http://testserver"))  # as a browser: no header
        assert opened.status_code == 200
        assert opened.headers["content-type"].split(";")[0] in {"image/png", "text/html"}
    urls = {annotation["url_citation"]["url"] for annotation in message["annotations"]}
    assert urls == {source["page_image_url"] for source in message["sources"]}


def test_a_store_without_boxes_still_answers_and_shows_pages(
    embedder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.load

    (tmp_path / "docs").mkdir()
    manual = write_manual(tmp_path / "docs" / "manual.pdf")
    monkeypatch.setattr(ingest.load, "_pdf_boxes", lambda path, document: None)  # loading as before boxes
    components = Components(Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER), use_llm=False)
    components.share_embedder(embedder)
    components.ingest_pipeline("docs").run([tmp_path / "docs"])
    rows = components.lexical_index("docs").chunks_of_files([str(manual)])
    stored = components.lexical_index("docs").chunks([row.chunk_id for row in rows])
    assert stored and all("boxes" not in metadata for _, metadata in stored.values())

    with TestClient(create_app(components, ServeOptions.from_components(components, warm_up=False))) as client:
        found = client.post("/v1/chunks", json={"model": "rag-docs", "query": "descale the coffee machine", "k": 2})
        assert found.status_code == 200 and found.json()["data"]
        first = found.json()["data"][0]
        page = client.get(first["page_image_url"].removeprefix("http://testserver"))
        assert page.status_code == 200 and page.headers["content-type"] == "image/png"
        assert len(highlighted_pixels(page.content)) == 0  # the page, without a highlight

"""Properties of the chunker and the context assembly, for arbitrary Chinese, English and mixed text (hypothesis):
no chunk exceeds the limit, every chunk is the exact source text at its offsets, nothing in the text is lost
between chunks, and a packed context never exceeds its budget and counts exactly."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.chunk import chunk_document
from ingest.load import Element, LoadedDocument
from rag.answer.context import pack_context
from rag.chunks import ContextChunk
from tests.test_chunk import CharCounter
from tests.test_context import count

CHINESE = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF), min_size=1, max_size=40)
ENGLISH = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=1, max_size=12)
ENDS = st.sampled_from(["。", "！", "？", "；", ". ", "! ", "? ", "\n", "", " ", "，", "3.5", "e.g. "])
SENTENCE = st.builds(
    lambda parts, end: " ".join(parts) + end, st.lists(CHINESE | ENGLISH, min_size=1, max_size=6), ENDS
)
PARAGRAPH = st.builds("".join, st.lists(SENTENCE, min_size=1, max_size=12))
TABLE = st.builds(lambda rows: "\n".join(" | ".join(row) for row in rows),
                  st.lists(st.lists(ENGLISH | CHINESE, min_size=2, max_size=4), min_size=2, max_size=12))  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> LoadedDocument:
    elements: list[Element] = []
    heading: tuple[str, ...] = ()
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["title", "text", "text", "table"]))
        page = draw(st.none() | st.integers(1, 3))
        if kind == "title":
            title = draw(CHINESE | ENGLISH)
            heading = (title,)
            elements.append(Element(title, "title", heading, page))
        else:
            elements.append(Element(draw(TABLE if kind == "table" else PARAGRAPH).strip() or "x", kind, heading, page))
    return LoadedDocument(elements, "test")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.integers(16, 200), st.integers(0, 40))
def test_chunks_fit_are_exact_slices_and_lose_nothing(document: LoadedDocument, limit: int, overlap: int) -> None:
    counter = CharCounter()
    chunks = chunk_document(document, counter, max_tokens=limit, overlap=overlap)
    text = document.text
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.tokens <= limit and counter.count_tokens([chunk.embed_text])[0] == chunk.tokens
        assert chunk.text == text[chunk.start : chunk.end]  # offsets map back to the exact source text
        for position in range(chunk.start, chunk.end):
            covered[position] = True
    for element, offset in zip(document.elements, document.offsets, strict=True):
        if element.kind == "title" and any(e.kind != "title" for e in document.elements):
            continue  # titles travel as the heading path of what follows
        for position in range(offset, offset + len(element.text)):
            assert covered[position] or text[position].isspace(), (element, position)  # nothing lost


@st.composite
def retrieved(draw: st.DrawFn) -> list[ContextChunk]:
    files = draw(st.lists(PARAGRAPH, min_size=1, max_size=4))
    chunks = []
    for number, body in enumerate(files):
        source = f"/docs/file{number}.txt"
        cuts = sorted({*draw(st.lists(st.integers(0, len(body)), max_size=6)), 0, len(body)})
        for index, (start, end) in enumerate(itertools.pairwise(cuts)):
            if body[start:end].strip():
                chunks.append(ContextChunk(f"{source}#{index}", body[start:end], source, source, f"file{number}.txt",
                                           index, start, end, score=draw(st.floats(0, 1))))  # fmt: skip
    return draw(st.permutations(chunks))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retrieved(), st.integers(8, 600))
def test_a_packed_context_never_exceeds_its_budget_and_counts_exactly(chunks: list[ContextChunk], budget: int) -> None:
    packed = pack_context(chunks, budget, count)
    assert packed.tokens == count(packed.text) <= budget
    for passage in packed.passages:
        assert passage.text.strip() and passage.text.strip() in packed.text  # rendered whole, trimmed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents(), limit=st.integers(24, 160))
def test_no_chunk_exceeds_what_the_real_embedder_reads(multilingual_embedder: object, document: LoadedDocument,
                                                       limit: int) -> None:  # fmt: skip
    chunks = chunk_document(document, multilingual_embedder, max_tokens=limit, overlap=8)  # type: ignore[arg-type]
    for chunk in chunks:
        assert multilingual_embedder.count_tokens([chunk.embed_text])[0] == chunk.tokens <= limit  # type: ignore[attr-defined]
        assert chunk.text == document.text[chunk.start : chunk.end]

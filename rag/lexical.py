"""The local side of retrieval: BM25 over jieba tokens (Chinese) and words (English), and a copy of every chunk.

Stored in SQLite beside the store (``data_dir/lexical/<collection>.sqlite3``): an FTS5 table for BM25 (queries rank
with FTS5's own ``bm25()``) and a plain table with each chunk's text and metadata, indexed by file and position, so
a question reads its passages and their neighbours locally in a millisecond instead of through Chroma ``get`` calls
(tens of milliseconds each, more against a server). Inserts and deletes are incremental and transactional. The
vector store stays the source of truth; :meth:`LexicalIndex.sync` reconciles the two by chunk id (cheap when they
agree), so an interrupted ingest or a store shared through a Chroma server never leaves the local side wrong for
long.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rag.context import ContextChunk
from rag.store import with_heading

if TYPE_CHECKING:
    from rag.store import ChunkStore

__all__ = ["LexicalHit", "LexicalIndex", "index_body", "tokenize"]

_WORD = re.compile(r"[\w\u3400-\u9fff]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")
# Function words that match nearly every Chinese passage: they only slow the query down.
_STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 被 把 对 为 以 于 之 其 这 那 有 个 中 上 下 吗 呢 吧 啊 什么 哪 哪些 哪个 "
    "谁 多少 怎么 如何 为什么 a an the of to in on for and or is are was were be what which who how".split()
)
#: How BM25 bodies are tokenised, stored in the index: an index of another tokenisation is refilled from the store.
TOKENIZER_VERSION = "jieba-search-1"
#: The columns of the ``rows`` table: a table of another layout is refilled from the store (bodies are kept).
ROWS_LAYOUT = "rows-3"
# The rows table: each chunk's position, the fields of rag.context.ContextChunk (so assembly reads them without
# parsing JSON) and its whole metadata as JSON (what a retrieved Document carries).
_ROWS_TABLE = (
    "CREATE TABLE IF NOT EXISTS rows (chunk_id TEXT PRIMARY KEY, source_abs TEXT NOT NULL, "
    "chunk_index INTEGER NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, file_name TEXT NOT NULL, "
    "start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, page INTEGER, heading TEXT NOT NULL, "
    "chunk_count INTEGER NOT NULL, mixtral_tokens INTEGER, metadata TEXT NOT NULL)"
)
# In ContextChunk's field order (the score, 0.0, is the retriever's to set).
_CHUNK_COLUMNS = (
    "chunk_id, text, source_abs, source, file_name, chunk_index, start_char, end_char, page, heading, 0.0, "
    "chunk_count, mixtral_tokens"
)
_BATCH = 500
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


@functools.cache
def _mixtral_tokenizer() -> Any:
    """The Mixtral vocabulary's tokenizer, loaded once; None when mistral-common is unavailable."""
    try:
        from rag.tokens import MixtralTokenizer

        return MixtralTokenizer()
    except Exception:  # counting at question time still works: the kept counts are only a head start
        return None


def _mixtral_counts(texts: Sequence[str]) -> list[int | None]:
    """Each text's tokens with the Mixtral vocabulary (what packing the context for Chinese-Mixtral counts), kept
    with the chunk so a question need not count whole chunks again; None when mistral-common is unavailable."""
    tokenizer = _mixtral_tokenizer()
    if tokenizer is None:
        return [None] * len(texts)
    return [len(ids) for ids in tokenizer.encode_many(texts)]


def _quoted(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'


class LexicalHit(NamedTuple):
    """One BM25 match: its chunk, its BM25 score and the share of the query's weight (IDF) its text covers."""

    chunk_id: str
    score: float
    coverage: float


class LexicalIndex:
    """A BM25 index of chunk texts keyed by chunk id, with a local copy of each chunk's text and metadata."""

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
            connection.execute("PRAGMA mmap_size=268435456")  # reads straight from the page cache
            with connection:
                connection.execute(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5("
                    "chunk_id UNINDEXED, body, tokenize='unicode61 remove_diacritics 0')"
                )
                connection.execute("CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5vocab(chunks, 'row')")
                connection.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT)")
                self._upgrade(connection)
                connection.execute(_ROWS_TABLE)
                connection.execute("CREATE INDEX IF NOT EXISTS rows_position ON rows (source_abs, chunk_index)")
            self._local.connection = connection
        return connection

    @staticmethod
    def _upgrade(connection: sqlite3.Connection) -> None:
        """Empty what an index of an older tokenisation or layout holds wrongly; :meth:`sync` refills it."""
        info = dict(connection.execute("SELECT key, value FROM info").fetchall())
        tokenizer, layout = info.get("tokenizer"), info.get("layout")
        if tokenizer is not None and "+" in tokenizer:  # written when one string named both ("jieba-search-1+rows-2")
            tokenizer, layout = tokenizer.split("+", 1)
        if tokenizer != TOKENIZER_VERSION:
            connection.execute("DELETE FROM chunks")
            connection.execute("DROP TABLE IF EXISTS rows")
        elif layout != ROWS_LAYOUT:
            connection.execute("DROP TABLE IF EXISTS rows")
            # the bodies stay: sync() refills the rows alone, and drops bodies the store no longer has
            connection.execute("INSERT OR REPLACE INTO info (key, value) VALUES ('refill_rows', '1')")
        connection.executemany(
            "INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)",
            [("tokenizer", TOKENIZER_VERSION), ("layout", ROWS_LAYOUT)],
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0])

    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT chunk_id FROM rows")}

    # -- writing -------------------------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        bodies: Sequence[str] | None = None,
    ) -> None:
        """Add (or replace) chunks: their stored text and metadata, and their BM25 body (:func:`index_body` of the
        heading line and the text; computed here unless given, as the ingest pipeline does in its loader thread)."""
        if bodies is None:
            bodies = [
                index_body(with_heading(str(m.get("heading", "")), t)) for t, m in zip(texts, metadatas, strict=True)
            ]
        with self._db as db:
            db.executemany("DELETE FROM chunks WHERE chunk_id = ?", [(chunk_id,) for chunk_id in ids])
            db.executemany("INSERT INTO chunks (chunk_id, body) VALUES (?, ?)", zip(ids, bodies, strict=True))
            self._write_rows(db, ids, texts, metadatas)

    @staticmethod
    def _write_rows(
        db: sqlite3.Connection, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]]
    ) -> None:
        rows = []
        for chunk_id, text, meta, tokens in zip(ids, texts, metadatas, _mixtral_counts(texts), strict=True):
            chunk = ContextChunk.from_store(chunk_id, text, meta)
            rows.append(
                (
                    chunk_id,
                    chunk.source_abs,
                    chunk.chunk_index,
                    text,
                    chunk.source,
                    chunk.file_name,
                    chunk.start,
                    chunk.end,
                    chunk.page,
                    chunk.heading,
                    chunk.chunk_count,
                    tokens,
                    json.dumps(dict(meta), ensure_ascii=False),
                )
            )
        db.executemany(
            "INSERT OR REPLACE INTO rows (chunk_id, source_abs, chunk_index, text, source, file_name, start_char, "
            "end_char, page, heading, chunk_count, mixtral_tokens, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )

    def delete(self, ids: Iterable[str]) -> None:
        keys = [(chunk_id,) for chunk_id in ids]
        with self._db as db:
            db.executemany("DELETE FROM chunks WHERE chunk_id = ?", keys)
            db.executemany("DELETE FROM rows WHERE chunk_id = ?", keys)

    def clear(self) -> None:
        with self._db as db:
            db.execute("DELETE FROM chunks")
            db.execute("DELETE FROM rows")

    def sync(self, store: ChunkStore) -> tuple[int, int]:
        """Make the index hold exactly the store's chunks; returns (added, removed)."""
        stored = store.all_ids()
        present = self.ids()
        refill = self._db.execute("SELECT 1 FROM info WHERE key = 'refill_rows'").fetchone() is not None
        # after a layout change the rows are gone but the bodies are not: they need no tokenising again
        bodied = {row[0] for row in self._db.execute("SELECT chunk_id FROM chunks")} if refill else set()
        missing = sorted(stored - present)
        extra = (present | bodied) - stored
        if extra:
            self.delete(extra)
        for first in range(0, len(missing), _BATCH):
            batch = missing[first : first + _BATCH]
            found = store.chunks(batch)
            kept = [chunk_id for chunk_id in batch if chunk_id in found]
            texts, metadatas = [found[i][0] for i in kept], [found[i][1] for i in kept]
            if all(chunk_id in bodied for chunk_id in kept):
                with self._db as db:
                    self._write_rows(db, kept, texts, metadatas)
            else:
                self.add(kept, texts, metadatas)
        if refill:
            with self._db as db:
                db.execute("DELETE FROM info WHERE key = 'refill_rows'")
        return len(missing), len(extra)

    # -- BM25 ------------------------------------------------------------------------------------------------
    @staticmethod
    def _query_terms(query: str) -> list[str]:
        terms = list(dict.fromkeys(t for t in tokenize(query) if t not in _STOPWORDS))
        return terms or list(dict.fromkeys(tokenize(query)))

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Best ``k`` chunk ids with their BM25 scores (higher is better)."""
        return [(hit.chunk_id, hit.score) for hit in self.search_hits(query, k)]

    def search_hits(self, query: str, k: int) -> list[LexicalHit]:
        """Best ``k`` chunks by BM25, each with the IDF-weighted share of the query's terms its text contains.

        BM25 rewards a passage that repeats one query word many times; coverage rewards one that has *all* of the
        question's words (the event, the date, the place). The retriever mixes the two.
        """
        terms = self._query_terms(query)
        if not terms:
            return []
        expression = " OR ".join(_quoted(term) for term in terms)
        rows = self._db.execute(
            "SELECT chunk_id, -bm25(chunks) AS score, body FROM chunks WHERE chunks MATCH ? "
            "ORDER BY score DESC LIMIT ?",
            (expression, k),
        ).fetchall()
        if not rows:
            return []
        weights = self._idf(terms)
        total = sum(weights.values()) or 1.0
        hits = []
        for chunk_id, score, body in rows:
            present = set(body.split())
            covered = sum(weight for term, weight in weights.items() if term in present)
            hits.append(LexicalHit(chunk_id, float(score), covered / total))
        return hits

    def _idf(self, terms: Sequence[str]) -> dict[str, float]:
        """BM25's IDF of each term over the indexed chunks (FTS5's own document counts)."""
        # counted in the plain table: counting the FTS5 table scans its index (10 ms at 25K chunks, 1 ms here)
        documents = max(1, int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0]))
        marks = ",".join("?" * len(terms))
        found = dict(self._db.execute(f"SELECT term, doc FROM terms WHERE term IN ({marks})", list(terms)).fetchall())
        return {
            term: math.log(1.0 + (documents - found.get(term, 0) + 0.5) / (found.get(term, 0) + 0.5)) for term in terms
        }

    # -- reading chunks (the ChunkReader protocol of rag.store) ----------------------------------------------
    def chunks(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Text and metadata of the chunks ``ids`` that are indexed."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        unique = list(dict.fromkeys(ids))
        for first in range(0, len(unique), _BATCH):
            batch = unique[first : first + _BATCH]
            marks = ",".join("?" * len(batch))
            query = f"SELECT chunk_id, text, metadata, mixtral_tokens FROM rows WHERE chunk_id IN ({marks})"
            for chunk_id, text, metadata, tokens in self._db.execute(query, batch):
                meta = json.loads(metadata)
                if tokens is not None:
                    meta["mixtral_tokens"] = tokens
                found[chunk_id] = (text, meta)
        return found

    def chunks_by_index(self, wanted: Mapping[str, Iterable[int]]) -> list[ContextChunk]:
        """The chunks ``{source_abs: chunk indices}`` that exist."""
        positions = [(source, int(i)) for source, indices in wanted.items() for i in set(indices) if int(i) >= 0]
        found: list[ContextChunk] = []
        for first in range(0, len(positions), _BATCH):
            batch = positions[first : first + _BATCH]
            # one indexed join for all the windows (a query per file costs twice as much)
            values = ",".join(["(?,?)"] * len(batch))
            query = (
                f"WITH wanted (wanted_source, position) AS (VALUES {values}) SELECT {_CHUNK_COLUMNS} FROM wanted "
                "JOIN rows ON rows.source_abs = wanted_source AND rows.chunk_index = position"
            )
            found.extend(map(ContextChunk._make, self._db.execute(query, [v for pair in batch for v in pair])))
        return found

    def chunks_of_files(self, sources: Iterable[str]) -> list[ContextChunk]:
        """Every chunk of the files ``sources`` (``source_abs``), in reading order per file."""
        names = sorted(set(sources))
        found: list[ContextChunk] = []
        for first in range(0, len(names), _BATCH):
            batch = names[first : first + _BATCH]
            query = (
                f"SELECT {_CHUNK_COLUMNS} FROM rows WHERE source_abs IN ({','.join('?' * len(batch))}) "
                "ORDER BY source_abs, chunk_index"
            )
            found.extend(map(ContextChunk._make, self._db.execute(query, batch)))
        return found

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

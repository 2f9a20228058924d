"""The local side of retrieval: BM25 over jieba tokens (Chinese) and words (English), and a copy of every chunk.

Kept beside the store (``data_dir/lexical/<collection>.sqlite3``): a SQLite table with each chunk's text, metadata,
position and BM25 body (its tokens), indexed by file and position, so a question reads its passages and their
neighbours locally in a millisecond instead of through Chroma ``get`` calls (tens of milliseconds each, more against
a server); and a tantivy index of the bodies (``<collection>.tantivy/``) that ranks by BM25 with early termination
(2 ms for a question over 60,000 chunks, where SQLite FTS5's ``bm25()`` scores every match: 17 ms).

The SQLite table is the local truth and the tantivy index is derived from it: both change in one write (SQLite's
write lock held across tantivy's commit, so writers in several processes take turns), and the table records the
stamp of tantivy's last commit, so a reader can tell whether they agree; when they do not (a crash between the two
commits, a lost folder), the tantivy index is rebuilt from the bodies in the table, without tokenising anything
again. The vector store stays the source of
truth above both; :meth:`LexicalIndex.sync` reconciles with it by chunk id (cheap when they agree), so an
interrupted ingest or a store shared through a Chroma server never leaves the local side wrong for long.

Both are derived data, so damage costs no document: a SQLite file that is not a database or is malformed is moved
aside (``<collection>.sqlite3.damaged``) and refilled from the store (at once when found by :meth:`LexicalIndex.sync`,
which every ingest and a retriever's first question run; else the call that found it fails with a message and the
next question or ingest refills it), and a tantivy folder that cannot be opened is started again from the table.
A full disk while writing is a :class:`rag.errors.DiskFullError` naming the file.

What the tokens are (jieba, stopwords) is :mod:`rag.retrieval.terms`'s; this module indexes and searches them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from rag.chunks import ContextChunk, with_heading
from rag.errors import DiskFullError, RagError, StoreDamagedError, disk_full_reason, is_damaged_database
from rag.retrieval.terms import TOKENIZER_VERSION, index_body, query_terms

if TYPE_CHECKING:
    from rag.retrieval.store import ChunkStore

__all__ = ["LexicalHit", "LexicalIndex"]

#: The columns of the ``rows`` table: a table of another layout is refilled from the store (bodies are kept).
ROWS_LAYOUT = "rows-4"
# The rows table: each chunk's position, the fields of rag.chunks.ContextChunk (so assembly reads them without
# parsing JSON), its whole metadata as JSON (what a retrieved Document carries) and its BM25 body.
_ROWS_TABLE = (
    "CREATE TABLE IF NOT EXISTS rows (chunk_id TEXT PRIMARY KEY, source_abs TEXT NOT NULL, "
    "chunk_index INTEGER NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, file_name TEXT NOT NULL, "
    "start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, page INTEGER, heading TEXT NOT NULL, "
    "chunk_count INTEGER NOT NULL, mixtral_tokens INTEGER, metadata TEXT NOT NULL, body TEXT NOT NULL)"
)
# tantivy refuses terms over 65,530 bytes; a token this long (a base64 blob) is never asked for anyway.
_LONG_TOKEN = re.compile(r"\S{256,}")
_WRITER_HEAP = 32_000_000
# In ContextChunk's field order (the score, 0.0, is the retriever's to set; the OCR confidence and a table's
# header row, rare, stay in the metadata JSON rather than columns of every row).
_CHUNK_COLUMNS = (
    "chunk_id, text, source_abs, source, file_name, chunk_index, start_char, end_char, page, heading, 0.0, "
    "chunk_count, mixtral_tokens, json_extract(metadata, '$.ocr_confidence'), "
    "coalesce(json_extract(metadata, '$.table_header'), '')"
)
_BATCH = 500
#: Seconds a connection waits for another process's write lock.
_BUSY_TIMEOUT_S = 60.0
logger = logging.getLogger("rag.lexical")
_Result = TypeVar("_Result")


def _guarded(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """A damaged table or a full disk met by a :class:`LexicalIndex` method becomes an error naming the file (a
    damaged one is first moved aside, so the next question or ingest refills it from the store)."""

    @functools.wraps(method)
    def guarded(self: LexicalIndex, *args: Any, **kwargs: Any) -> _Result:
        try:
            return method(self, *args, **kwargs)
        except RagError:
            raise
        except Exception as error:
            raise self._translate(error) from error

    return guarded


def _tables(connection: sqlite3.Connection) -> set[str]:
    return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@functools.cache
def _schema() -> Any:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("chunk_id", stored=True, tokenizer_name="raw")
    builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")  # BM25 needs no positions
    return builder.build()


class LexicalHit(NamedTuple):
    """One BM25 match: its chunk, its BM25 score and the share of the query's weight (IDF) its text covers."""

    chunk_id: str
    score: float
    coverage: float


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (it stays so). Several processes opening a new file at once race for
    the switch, and SQLite answers the loser "database is locked" at once, without waiting for the busy timeout
    (seen with three writers in CI): it is tried again until the timeout, and not at all once the file is in WAL."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            if str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class LexicalIndex:
    """A BM25 index of chunk texts keyed by chunk id, with a local copy of each chunk's text and metadata.

    ``count_tokens``: counts texts' tokens, in one call for many, with the vocabulary of the model that will read
    them (the composition root gives the Mixtral vocabulary's counter); each row this index writes keeps its
    text's count (column ``mixtral_tokens``, read back as the ``mixtral_tokens`` metadata), so packing a context
    need not count whole chunks again. None where a text cannot be counted; ``count_tokens`` None: no counts are
    kept (the rows hold NULL) and the packer counts at question time. The retrieval layer never loads a model's
    tokenizer itself.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        count_tokens: Callable[[Sequence[str]], Sequence[int | None]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.count_tokens = count_tokens
        self.bm25_path = self.path.with_suffix(".tantivy")
        self._local = threading.local()
        self._bm25_lock = threading.Lock()
        self._bm25: Any = None  # the tantivy index, opened on first use
        self._searcher: tuple[str | None, Any] | None = None  # (commit stamp, searcher) of the last search
        self._generation = 0  # grows when a damaged file is set aside: every thread's connection is then reopened
        self.needs_sync = False
        """True when a damaged table was set aside and started empty: :meth:`sync` with the store refills it."""

    @property
    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "generation", 0) != self._generation:
            connection.close()  # it reads the file that was set aside
            connection = self._local.connection = None
        if connection is None:
            try:
                connection = self._connect()
            except sqlite3.DatabaseError as error:
                if not is_damaged_database(error):
                    raise
                # derived data: set aside (kept for a post-mortem) and start empty; sync() refills it from the store
                self._set_aside(error)
                connection = self._connect()
            self._local.connection = connection
            self._local.generation = self._generation
        return connection

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)
        try:
            _use_wal(connection)
            connection.execute("PRAGMA mmap_size=268435456")  # reads straight from the page cache
            with connection:
                connection.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT)")
                self._upgrade(connection)
                connection.execute(_ROWS_TABLE)
                connection.execute("CREATE INDEX IF NOT EXISTS rows_position ON rows (source_abs, chunk_index)")
        except BaseException:
            connection.close()
            raise
        return connection

    @property
    def damaged_path(self) -> Path:
        """Where a damaged table is moved to."""
        return self.path.with_name(self.path.name + ".damaged")

    def _set_aside(self, error: BaseException) -> None:
        """Move a damaged SQLite file (and its WAL, which must not be replayed into a new file) aside."""
        logger.warning(
            "the local index %s is damaged (%s): moved to %s; it is refilled from the store",
            self.path, error, self.damaged_path,
        )  # fmt: skip
        with self._bm25_lock:
            connection = getattr(self._local, "connection", None)
            if connection is not None:
                connection.close()
                self._local.connection = None
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.damaged_path)
            self._generation += 1
            self._searcher = None
            self.needs_sync = True

    def _translate(self, error: Exception) -> Exception:
        """What a failure of this index tells the user (see :func:`_guarded`)."""
        if is_damaged_database(error):
            if self.path.exists():
                self._set_aside(error)
            return StoreDamagedError(
                f"the local index {self.path} was damaged ({error}); it was moved to {self.damaged_path} and is "
                "rebuilt from the store at the next question or ingest: ask again (or run `ingest PATH` again)"
            )
        reason = disk_full_reason(error, self.path)
        if reason is not None:
            return DiskFullError(
                f"the disk is full ({reason}): writing the local index {self.path} failed ({type(error).__name__}: "
                f"{error}). Nothing already stored is lost (each file keeps its previous version). Free space on "
                f"the disk that holds {self.path.parent} (or raise the limit), then run the same ingest again to "
                "complete the store"
            )
        return error

    @staticmethod
    def _upgrade(connection: sqlite3.Connection) -> None:
        """Empty what an index of an older tokenisation or layout holds wrongly; :meth:`sync` refills it."""
        info = dict(connection.execute("SELECT key, value FROM info").fetchall())
        tokenizer, layout = info.get("tokenizer"), info.get("layout")
        if tokenizer is not None and "+" in tokenizer:  # written when one string named both ("jieba-search-1+rows-2")
            tokenizer, layout = tokenizer.split("+", 1)
        tables = _tables(connection)
        if tokenizer != TOKENIZER_VERSION or layout != ROWS_LAYOUT:
            # the rows go, so tantivy must follow: without a recorded stamp the next write rebuilds it from them
            connection.execute("DELETE FROM info WHERE key = 'bm25_opstamp'")
        if tokenizer != TOKENIZER_VERSION:
            connection.execute("DROP TABLE IF EXISTS rows")
            connection.execute("DROP TABLE IF EXISTS kept_bodies")
        elif layout != ROWS_LAYOUT:
            # the bodies are kept, so sync() refills the rows from the store without tokenising them again
            connection.execute("CREATE TABLE IF NOT EXISTS kept_bodies (chunk_id TEXT PRIMARY KEY, body TEXT)")
            if "chunks" in tables:  # the FTS5 table of layouts before rows-4
                connection.execute("INSERT OR IGNORE INTO kept_bodies SELECT chunk_id, body FROM chunks")
            elif "rows" in tables and "body" in {c[1] for c in connection.execute("PRAGMA table_info(rows)")}:
                connection.execute("INSERT OR IGNORE INTO kept_bodies SELECT chunk_id, body FROM rows")
            connection.execute("DROP TABLE IF EXISTS rows")
        if "chunks" in tables:
            connection.execute("DROP TABLE IF EXISTS terms")
            connection.execute("DROP TABLE IF EXISTS chunks")
        connection.executemany(
            "INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)",
            [("tokenizer", TOKENIZER_VERSION), ("layout", ROWS_LAYOUT)],
        )

    @_guarded
    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0])

    @_guarded
    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT chunk_id FROM rows")}

    # -- the BM25 index (tantivy) ---------------------------------------------------------------------------
    def _recorded_stamp(self) -> str | None:
        """The stamp of the tantivy commit the table last went with."""
        row = self._db.execute("SELECT value FROM info WHERE key = 'bm25_opstamp'").fetchone()
        return str(row[0]) if row else None

    def _committed_stamp(self) -> str | None:
        """The stamp of the tantivy index's last commit (its meta.json), None when it has none."""
        try:
            return str(json.loads((self.bm25_path / "meta.json").read_text(encoding="utf-8"))["opstamp"])
        except (OSError, ValueError, KeyError):
            return None

    def _bm25_index(self) -> Any:
        import tantivy

        with self._bm25_lock:
            if self._bm25 is None:
                self.bm25_path.mkdir(parents=True, exist_ok=True)
                try:
                    self._bm25 = tantivy.Index(_schema(), path=str(self.bm25_path), reuse=True)
                except ValueError:  # written with another schema: it is derived data, so start it again
                    shutil.rmtree(self.bm25_path)
                    self.bm25_path.mkdir(parents=True)
                    self._bm25 = tantivy.Index(_schema(), path=str(self.bm25_path), reuse=True)
            return self._bm25

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[sqlite3.Connection, Any]]:
        """One write to both sides: SQLite's write lock is held across tantivy's commit (writers in other processes
        wait for it) and SQLite commits last, with the stamp of tantivy's commit. A tantivy index that disagrees
        with the table when the write starts (a crash between the two commits) is first rebuilt from the table."""
        db = self._db
        index = self._bm25_index()
        db.execute("BEGIN IMMEDIATE")
        writer = None
        try:
            writer = index.writer(heap_size=_WRITER_HEAP, num_threads=1)
            if self._committed_stamp() != self._recorded_stamp():
                writer.delete_all_documents()
                self._index_bodies(writer, db.execute("SELECT chunk_id, body FROM rows"), replace=False)
            yield db, writer
            stamp = writer.commit()
            writer.wait_merging_threads()
            writer = None  # dropped: tantivy's writer lock is free again
            db.execute("INSERT OR REPLACE INTO info (key, value) VALUES ('bm25_opstamp', ?)", (str(stamp),))
            db.commit()
        except BaseException:
            if writer is not None:
                writer.rollback()
                # release tantivy's writer lock now: the caller's frame (kept by the traceback of an error a UI
                # shows, say) still holds this writer, and a held lock refuses every later write of this process
                writer.wait_merging_threads()
                writer = None
            db.rollback()
            raise

    @staticmethod
    def _index_bodies(writer: Any, rows: Iterable[tuple[str, str]], *, replace: bool = True) -> None:
        import tantivy

        for chunk_id, body in rows:
            if replace:
                writer.delete_documents_by_term("chunk_id", chunk_id)
            if _LONG_TOKEN.search(body):
                body = _LONG_TOKEN.sub(lambda match: match.group()[:255], body)
            writer.add_document(tantivy.Document(chunk_id=chunk_id, body=body))

    def _current_searcher(self) -> Any:
        """A searcher of the tantivy index as of the table's last write (rebuilding it if the two disagree)."""
        stamp = self._recorded_stamp()
        cached = self._searcher
        if cached is not None and cached[0] == stamp:
            return cached[1]
        index = self._bm25_index()
        if self._committed_stamp() != stamp or stamp is None:
            with self._writing():  # a write with nothing in it: it starts by rebuilding the disagreeing index
                pass
            stamp = self._recorded_stamp()
        index.reload()
        searcher = index.searcher()
        self._searcher = (stamp, searcher)
        return searcher

    # -- writing -------------------------------------------------------------------------------------------
    @_guarded
    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        bodies: Sequence[str] | None = None,
        token_counts: Sequence[int | None] | None = None,
    ) -> None:
        """Add (or replace) chunks: their stored text and metadata, their BM25 body (:func:`index_body` of the
        heading line and the text) and their model token counts (see ``count_tokens``). Bodies and counts are
        computed here unless given, as the ingest pipeline gives them (computed in its loader thread)."""
        if bodies is None:
            bodies = [
                index_body(with_heading(str(m.get("heading", "")), t)) for t, m in zip(texts, metadatas, strict=True)
            ]
        if token_counts is None:
            token_counts = self.count_tokens(texts) if self.count_tokens is not None else [None] * len(texts)
        with self._writing() as (db, writer):
            self._write_rows(db, ids, texts, metadatas, bodies, token_counts)
            self._index_bodies(writer, zip(ids, bodies, strict=True))

    @staticmethod
    def _write_rows(
        db: sqlite3.Connection,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        bodies: Sequence[str],
        token_counts: Sequence[int | None],
    ) -> None:
        rows = []
        for chunk_id, text, meta, tokens, body in zip(ids, texts, metadatas, token_counts, bodies, strict=True):
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
                    body,
                )
            )
        db.executemany(
            "INSERT OR REPLACE INTO rows (chunk_id, source_abs, chunk_index, text, source, file_name, start_char, "
            "end_char, page, heading, chunk_count, mixtral_tokens, metadata, body) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )

    @_guarded
    def delete(self, ids: Iterable[str]) -> None:
        keys = list(ids)
        if not keys:
            return
        with self._writing() as (db, writer):
            db.executemany("DELETE FROM rows WHERE chunk_id = ?", [(chunk_id,) for chunk_id in keys])
            for chunk_id in keys:
                writer.delete_documents_by_term("chunk_id", chunk_id)

    @_guarded
    def clear(self) -> None:
        with self._writing() as (db, writer):
            db.execute("DELETE FROM rows")
            writer.delete_all_documents()

    def sync(self, store: ChunkStore) -> tuple[int, int]:
        """Make the index hold exactly the store's chunks (the rows it adds counted with ``count_tokens``, like
        :meth:`add`'s); returns (added, removed). A damaged table found on the way is set aside and refilled."""
        try:
            return self._sync(store)
        except StoreDamagedError:
            if not self.needs_sync:  # the store's own damage, not this table's
                raise
            return self._sync(store)  # the damaged file was set aside: fill the new one

    def _sync(self, store: ChunkStore) -> tuple[int, int]:
        stored = store.all_ids()
        present = self.ids()
        missing = sorted(stored - present)
        extra = present - stored
        if extra:
            self.delete(extra)
        kept = "kept_bodies" in _tables(self._db)
        for first in range(0, len(missing), _BATCH):
            batch = missing[first : first + _BATCH]
            found = store.chunks(batch)
            ids = [chunk_id for chunk_id in batch if chunk_id in found]
            texts, metadatas = [found[i][0] for i in ids], [found[i][1] for i in ids]
            bodies: list[str] | None = None
            if kept:  # after a layout change: the bodies need no tokenising again
                marks = ",".join("?" * len(ids))
                known = dict(
                    self._db.execute(f"SELECT chunk_id, body FROM kept_bodies WHERE chunk_id IN ({marks})", ids)
                )
                if len(known) == len(ids):
                    bodies = [known[i] for i in ids]
            self.add(ids, texts, metadatas, bodies)
        if kept:
            with self._db as db:
                db.execute("DROP TABLE kept_bodies")
        self.needs_sync = False
        return len(missing), len(extra)

    # -- BM25 ------------------------------------------------------------------------------------------------
    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Best ``k`` chunk ids with their BM25 scores (higher is better)."""
        return [(hit.chunk_id, hit.score) for hit in self.search_hits(query, k)]

    @_guarded
    def search_hits(self, query: str, k: int) -> list[LexicalHit]:
        """Best ``k`` chunks by BM25, each with the IDF-weighted share of the query's terms its text contains.

        BM25 rewards a passage that repeats one query word many times; coverage rewards one that has *all* of the
        question's words (the event, the date, the place). The retriever mixes the two.
        """
        import tantivy

        terms = query_terms(query)
        if not terms:
            return []
        searcher = self._current_searcher()
        schema = _schema()
        should = tantivy.Occur.Should
        expression = tantivy.Query.boolean_query([(should, tantivy.Query.term_query(schema, "body", t)) for t in terms])
        found = [
            (float(score), searcher.doc(address)["chunk_id"][0])
            for score, address in searcher.search(expression, k, count=False).hits
        ]
        if not found:
            return []
        marks = ",".join("?" * len(found))
        bodies = dict(
            self._db.execute(f"SELECT chunk_id, body FROM rows WHERE chunk_id IN ({marks})", [i for _, i in found])
        )
        weights = self._idf(searcher, terms)
        total = sum(weights.values()) or 1.0
        hits = []
        for score, chunk_id in found:
            body = bodies.get(chunk_id)
            if body is None:  # deleted since this searcher was opened
                continue
            present = set(body.split())
            covered = sum(weight for term, weight in weights.items() if term in present)
            hits.append(LexicalHit(chunk_id, score, covered / total))
        return hits

    @staticmethod
    def _idf(searcher: Any, terms: Sequence[str]) -> dict[str, float]:
        """BM25's IDF of each term over the indexed chunks (tantivy's own document counts)."""
        documents = max(1, int(searcher.num_docs))
        frequencies = {term: int(searcher.doc_freq("body", term)) for term in terms}
        return {term: math.log(1.0 + (documents - df + 0.5) / (df + 0.5)) for term, df in frequencies.items()}

    # -- reading chunks (the ChunkReader protocol of rag.retrieval.store) ----------------------------------------------
    @_guarded
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

    @_guarded
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

    @_guarded
    def sources(self) -> list[str]:
        """Every file that has rows (the position index answers it without reading the rows)."""
        return [row[0] for row in self._db.execute("SELECT DISTINCT source_abs FROM rows")]

    @_guarded
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
        self._searcher = None
        self._bm25 = None

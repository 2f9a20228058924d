"""The ingest run: discover -> hash -> load -> chunk -> embed -> write, incremental and crash-safe.

Unit of atomicity: one file version. Its chunks are upserted under ids derived from (file, content hash, chunking
signature, index), and only then are the file's other versions deleted. Any interruption leaves either the old
version complete, or an incomplete new one that the next run detects (fewer chunks than ``chunk_count``) and
rewrites; the result is the store of one clean run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ingest.chunk import CHUNKER_VERSION, Chunk, chunk_document
from ingest.discover import DiscoveredFile, discover, file_sha256, printable_path
from ingest.load import SUPPORTED_EXTENSIONS, LoadError, load_document
from ingest.ocr import LOW_CONFIDENCE, OcrEngine
from rag.chunks import BOXES_KEY, encode_boxes
from rag.errors import RagError, StoreError
from rag.retrieval.embedders.base import Embedder
from rag.retrieval.lexical import LexicalIndex
from rag.retrieval.store import ChunkStore, FileVersion
from rag.retrieval.terms import index_body

__all__ = ["FileProblem", "IngestPipeline", "IngestProgress", "IngestReport", "chunk_signature"]

_FIRST_FLUSH_CHUNKS = 64
"""Chunks of the first embedding batch of a run; each later batch doubles, up to ``flush_chunks``."""

_GIL_TURN_SECONDS = 0.0005
"""Python's switch interval during a run (its default is 5 ms). The encoder's thread takes the GIL back after every
forward pass and between its pooling steps; while the loader thread runs Python, each of those waits out the
loader's turn. With 5 ms turns, a loader reading ahead slowed the encoder by about what it saved (measured:
docs/benchmarks.md)."""


@dataclass(frozen=True)
class FileProblem:
    path: str
    error: str


@dataclass
class IngestReport:
    files_seen: int = 0
    files_added: int = 0
    files_updated: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    files_failed: list[FileProblem] = field(default_factory=list)
    files_skipped: list[FileProblem] = field(default_factory=list)
    """Files met while walking a folder whose format is not supported (not an error)."""
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_reused: int = 0
    """Chunks whose vectors were taken from the store (renamed or partly changed files) instead of re-embedded."""
    chunks_total: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class IngestProgress:
    files_done: int
    """Files loaded, chunked, embedded and written."""
    files_total: int
    bytes_done: int
    bytes_total: int
    chunks_done: int
    current: str
    """The file last written."""
    reading: str = ""
    """The file being read now (ahead of the one being embedded), while it has pages: a long PDF or scan."""
    page: int = 0
    """Pages of :attr:`reading` read so far."""
    pages: int = 0
    """Pages of :attr:`reading` in all."""
    ocr_pages: int = 0
    """Pages of :attr:`reading` read so far by OCR."""


@contextmanager
def _short_gil_turns() -> Iterator[None]:
    """:data:`_GIL_TURN_SECONDS` for the duration; the interval before is restored unless someone changed it."""
    previous = sys.getswitchinterval()
    short = min(previous, _GIL_TURN_SECONDS)
    sys.setswitchinterval(short)
    try:
        yield
    finally:
        if sys.getswitchinterval() == short:
            sys.setswitchinterval(previous)


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def chunk_signature(embedding_model: str, chunk_size: int, chunk_overlap: int, *, ocr: bool = True) -> str:
    """Identifies how chunks were made; a change re-chunks (same model) or is refused (other model). OCR turned
    off (or back on) re-reads every file, since scans read differently; vectors of unchanged chunks are reused."""
    raw = f"chunker={CHUNKER_VERSION}|model={embedding_model}|size={chunk_size}|overlap={chunk_overlap}"
    if not ocr:  # the signature of OCR on is the one collections had before it could be turned off
        raw += "|ocr=off"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class _Work:
    file: DiscoveredFile
    file_hash: str
    previous: list[FileVersion]
    chunks: list[Chunk] = field(default_factory=list)
    lexical_bodies: list[str] = field(default_factory=list)
    token_counts: list[int | None] = field(default_factory=list)
    """The model's tokens of each chunk's text (``count_tokens``), kept by the lexical index."""
    ocr_pages: list[int] = field(default_factory=list)
    """Pages (image frames) that were read by OCR."""
    ocr_timeouts: list[int] = field(default_factory=list)
    """Pages (image frames) OCR gave up on at its time limit per page."""


@dataclass
class _Written:
    """One embedded batch on its way to the store: its files, chunk ids, vectors, rows and the ids it replaces."""

    batch: list[_Work]
    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadatas: list[dict[str, Any]]
    old: list[str]


class IngestPipeline:
    """Ingests files into one :class:`ChunkStore` with one embedder. Collaborators come in; nothing is global.

    ``count_tokens``: counts chunk texts' tokens with the vocabulary of the model that will read them (see
    :class:`LexicalIndex`); the counts are made in the loader thread, beside the embedder, and kept by ``lexical``.
    None: ``lexical`` counts with its own ``count_tokens``, if it has one.
    """

    def __init__(
        self,
        store: ChunkStore,
        embedder: Embedder,
        *,
        lexical: LexicalIndex | None = None,
        count_tokens: Callable[[Sequence[str]], Sequence[int | None]] | None = None,
        chunk_size: int = 512,
        chunk_size_chosen: bool = True,
        chunk_overlap: int = 64,
        max_file_bytes: int = 200 * 1024 * 1024,
        flush_chunks: int = 1024,
        read_ahead_chunks: int | None = None,
        ocr: OcrEngine | None = None,
        follow_links: bool = False,
        on_progress: Callable[[IngestProgress], None] | None = None,
        on_problem: Callable[[FileProblem, bool], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.lexical = lexical
        self.count_tokens = count_tokens
        self.chunk_size = chunk_size
        self.chunk_size_chosen = chunk_size_chosen
        """The user asked for ``chunk_size`` (False: the product's default, which is silently capped at what the
        embedder reads whole; a size the user chose and the embedder cannot read is said once per run)."""
        self.chunk_overlap = chunk_overlap
        self.max_file_bytes = max_file_bytes
        self.flush_chunks = flush_chunks
        self.read_ahead_chunks = read_ahead_chunks
        """Chunks the loader thread prepares ahead of the embedder (None: :meth:`default_read_ahead`)."""
        self.ocr = ocr
        """Reads images and PDF pages without a text layer (None: OCR off, those files fail with the reason)."""
        self.follow_links = follow_links
        """Follow symbolic links inside named folders (off: they are skipped, so no folder reaches outside)."""
        self._on_progress = on_progress
        self._on_problem = on_problem
        self._on_notice = on_notice
        # The last progress event: the loader thread updates its page fields, the writing loop the rest.
        self._progress = IngestProgress(0, 0, 0, 0, 0, "")
        self._progress_lock = threading.Lock()

    @property
    def signature(self) -> str:
        return chunk_signature(self.embedder.name, self.chunk_size, self.chunk_overlap, ocr=self.ocr is not None)

    # -- the run -------------------------------------------------------------------------------------------
    def run(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        reset: bool = False,
        gone: Sequence[str | os.PathLike[str]] = (),
    ) -> IngestReport:
        """Ingest ``paths`` (files and folders): new and changed files are written, unchanged ones skipped, and
        stored files that vanished from a named folder are removed.

        ``gone``: paths that no longer hold anything to ingest (a file deleted or renamed away, a folder moved
        out, a file that became a link not followed): stored files at or below them that this run does not find
        are removed too. A folder watcher hands the paths its events named here, so one change is not a walk of
        the whole folder.
        """
        started = time.monotonic()
        report = IngestReport()
        found = discover(paths, follow_links=self.follow_links)
        for missing in found.missing:
            self._fail(report, FileProblem(missing, "no such file or folder"))
        for link in found.links:
            report.files_skipped.append(FileProblem(link, "a symbolic link: not followed (--follow-links follows)"))
            if self._on_problem:
                self._on_problem(report.files_skipped[-1], False)
        named = {printable_path(os.path.abspath(os.fspath(p))) for p in paths}
        if reset:
            self.store.reset()
            if self.lexical is not None:
                self.lexical.clear()
        recorded_ocr = self.store.metadata.get("ocr")
        if recorded_ocr is not None and recorded_ocr != (self.ocr is not None) and self._on_notice:
            self._on_notice(
                f"OCR was {'on' if recorded_ocr else 'off'} when collection '{self.store.collection_name}' was "
                f"built and is {'on' if self.ocr else 'off'} now: every file is read again "
                "(vectors of unchanged passages are reused)"
            )
        self.store.open_for_writing(
            embedding_model=self.embedder.name, signature=self.signature, ocr=self.ocr is not None
        )
        if self.lexical is not None:
            self.lexical.sync(self.store)  # repairs what an interrupted run left behind
        stored = self.store.file_versions()
        all_hashes = {v.file_hash for versions in stored.values() for v in versions if v.complete}

        work: list[_Work] = []
        stale_ids: list[str] = []
        for file in found.files:
            report.files_seen += 1
            problem = self._check(file, explicitly_named=file.absolute in named)
            if problem is not None:
                if problem[1]:
                    self._fail(report, FileProblem(file.given, problem[0]))
                else:
                    report.files_skipped.append(FileProblem(file.given, problem[0]))
                    if self._on_problem:
                        self._on_problem(report.files_skipped[-1], False)
                continue
            try:
                file_hash = file_sha256(file.path)
            except OSError as error:
                self._fail(report, FileProblem(file.given, f"cannot be read ({error.strerror or error})"))
                continue
            versions = stored.get(file.absolute, [])
            current = [v for v in versions if v.file_hash == file_hash and v.signature == self.signature]
            if current and current[0].complete:
                report.files_unchanged += 1
                stale_ids += [i for v in versions if v is not current[0] for i in v.ids]
            else:
                work.append(_Work(file, file_hash, versions))

        # Files gone from a folder that was ingested before.
        present = {file.absolute for file in found.files}
        vanished = [printable_path(os.path.abspath(os.fspath(path))) for path in gone]
        for source, versions in stored.items():
            if source in present:
                continue
            if any(source.startswith(root + os.sep) for root in found.roots) or any(
                source == path or source.startswith(path + os.sep) for path in vanished
            ):
                report.files_removed += 1
                stale_ids += [i for v in versions for i in v.ids]
        if work:
            self._process(work, report, all_hashes)
        # Only now: a renamed file's vectors are taken from its old chunks while they still exist (an interrupted
        # run leaves them, and the next run finds them gone from the folder again).
        if stale_ids:
            self.store.delete(stale_ids)
            if self.lexical is not None:
                self.lexical.delete(stale_ids)
            report.chunks_removed += len(stale_ids)
        report.chunks_total = self.store.count()
        report.seconds = time.monotonic() - started
        return report

    def _check(self, file: DiscoveredFile, *, explicitly_named: bool) -> tuple[str, bool] | None:
        """A reason to leave the file out, and whether it counts as a failure."""
        extension = os.path.splitext(file.absolute)[1].lower()
        if extension not in SUPPORTED_EXTENSIONS:
            return f"unsupported format '{extension or '(no extension)'}'", explicitly_named
        if file.size == 0:
            return "empty file", True
        if file.size > self.max_file_bytes:
            return (
                f"too large ({file.size / 2**20:.0f} MB > {self.max_file_bytes / 2**20:.0f} MB); "
                "raise RAG_MAX_FILE_MB to ingest it",
                True,
            )
        return None

    def _fail(self, report: IngestReport, problem: FileProblem) -> None:
        report.files_failed.append(problem)
        if self._on_problem:
            self._on_problem(problem, True)

    # -- loading, chunking, embedding, writing ---------------------------------------------------------------
    def _process(self, work: list[_Work], report: IngestReport, known_hashes: set[str]) -> None:
        self.embedder.warm_up()
        max_tokens = self.embedder.max_tokens
        size = min(self.chunk_size, max_tokens)
        if size < self.chunk_size and self.chunk_size_chosen and self._on_notice:
            self._on_notice(
                f"chunk size {self.chunk_size} is more than {self.embedder.name} reads whole "
                f"({max_tokens} tokens): chunks are cut at {max_tokens} tokens instead"
            )
        overlap = min(self.chunk_overlap, size // 2)
        bytes_total = sum(w.file.size for w in work)
        with self._progress_lock:
            self._progress = IngestProgress(0, len(work), 0, bytes_total, 0, "")
        bytes_done = chunks_done = 0
        buffer: list[_Work] = []
        buffered_chunks = 0
        # The first batches are small and grow to flush_chunks: the encoder starts as soon as the first files are
        # chunked instead of waiting for a full batch (the loader thread keeps preparing files meanwhile).
        threshold = min(self.flush_chunks, _FIRST_FLUSH_CHUNKS)
        # One batch is written (Chroma, the local index) in the writer thread while the next one is embedded:
        # at most one write in flight, each submitted only after the one before it succeeded, so writes keep
        # their order and a failed write stops the run before any later batch is written.
        in_flight: tuple[Future[None], _Written] | None = None

        def settle() -> None:
            nonlocal chunks_done, in_flight
            if in_flight is not None:
                future, written = in_flight
                in_flight = None
                future.result()  # the write's StoreError, raised here
                chunks_done += self._account(written, report, known_hashes)

        def flush() -> None:
            nonlocal buffered_chunks, in_flight, threshold
            written = self._embed(buffer, report, known_hashes)
            settle()
            in_flight = (writer.submit(self._store_batch, written), written)
            buffer.clear()
            buffered_chunks = 0
            threshold = min(self.flush_chunks, threshold * 2)

        with _short_gil_turns(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") as writer:
            try:
                for files_done, (item, error) in enumerate(self._prepared(work, size, overlap), start=1):
                    bytes_done += item.file.size
                    if error is not None:
                        self._fail(report, FileProblem(item.file.given, error))
                    elif item.chunks:
                        self._tell_ocr(item)
                        buffer.append(item)
                        buffered_chunks += len(item.chunks)
                        if buffered_chunks >= threshold:
                            flush()
                    self._report_progress(
                        files_done=files_done,
                        files_total=len(work),
                        bytes_done=bytes_done,
                        bytes_total=bytes_total,
                        chunks_done=chunks_done,
                        current=item.file.given,
                    )
                if buffer:
                    flush()
                if in_flight is not None:
                    settle()
                    self._report_progress(chunks_done=chunks_done, current="")
            except BaseException:
                if in_flight is not None:  # never leave a write running past the run; the first error is the one
                    wait([in_flight[0]])
                raise

    def _report_progress(self, **changes: Any) -> None:
        """Send the progress event with ``changes`` applied (called by both the loader and the writing thread)."""
        if self._on_progress is None:
            return
        with self._progress_lock:
            self._progress = replace(self._progress, **changes)
            self._on_progress(self._progress)

    def _tell_ocr(self, item: _Work) -> None:
        if not self._on_notice:
            return
        if item.ocr_pages:
            self._on_notice(f"{item.file.given}: read by OCR (page {_pages(item.ocr_pages)})")
        if item.ocr_timeouts:
            self._on_notice(
                f"{item.file.given}: OCR gave up at its time limit per page on page {_pages(item.ocr_timeouts)} "
                "(kept what their text layer had; raise RAG_OCR_PAGE_TIME_LIMIT_S to read them)"
            )

    def _prepare(self, item: _Work, size: int, overlap: int) -> str | None:
        """Load, chunk and (for the lexical index) tokenise and count one file; runs in the loader thread, beside
        the embedder."""
        read_by_ocr = 0

        def on_page(page: int, pages: int, by_ocr: bool) -> None:
            nonlocal read_by_ocr
            read_by_ocr += by_ocr
            self._report_progress(reading=item.file.given, page=page, pages=pages, ocr_pages=read_by_ocr)

        try:
            document = load_document(item.file.path, ocr=self.ocr, on_page=on_page)
        except LoadError as error:
            return str(error)
        finally:
            if read_by_ocr or self._progress.reading == item.file.given:
                self._report_progress(reading="", page=0, pages=0, ocr_pages=0)
        item.ocr_pages = document.ocr_pages
        item.ocr_timeouts = document.ocr_timeouts
        try:
            item.chunks = chunk_document(document, self.embedder, max_tokens=size, overlap=overlap)
        except ValueError as error:
            return f"cannot be chunked ({error})"
        if self.lexical is not None:
            item.lexical_bodies = [index_body(chunk.embed_text) for chunk in item.chunks]
            if self.count_tokens is not None:
                item.token_counts = list(self.count_tokens([chunk.text for chunk in item.chunks]))
        return None

    def default_read_ahead(self) -> int:
        """A whole batch (``flush_chunks``) when the encoder leaves CPUs idle (a server embedder, or fewer encoder
        threads than CPUs: the next encode never waits for files); else a small window. On CPUs the encoder's
        threads fill, loading beside them slows every step of theirs (they wait for each other) by about what
        it saves (measured: docs/benchmarks.md)."""
        threads = self.embedder.cpu_threads
        if threads is not None and threads < available_cpus():
            return self.flush_chunks
        return min(self.flush_chunks, _FIRST_FLUSH_CHUNKS)

    def _prepared(self, work: list[_Work], size: int, overlap: int) -> Iterator[tuple[_Work, str | None]]:
        """Prepare files in a background thread, in order, while the embedder works: up to ``read_ahead_chunks``
        chunks ahead of it (always at least one file). Bounded by chunks, not files, as one file may make
        thousands."""
        limit = self.read_ahead_chunks if self.read_ahead_chunks is not None else self.default_read_ahead()
        ready: deque[tuple[_Work, str | BaseException | None]] = deque()
        state = threading.Condition()
        ahead = 0  # chunks prepared and not yet taken
        stopped = False

        def may_read_on() -> bool:
            return stopped or ahead < limit

        def load() -> None:
            nonlocal ahead
            for item in work:
                with state:
                    state.wait_for(may_read_on)
                    if stopped:
                        return
                outcome: str | BaseException | None
                try:
                    outcome = self._prepare(item, size, overlap)
                except BaseException as error:  # handed to the run, which raises it
                    outcome = error
                with state:
                    ready.append((item, outcome))
                    ahead += len(item.chunks)
                    state.notify_all()
                if isinstance(outcome, BaseException):
                    return

        loader = threading.Thread(target=load, name="ingest-load", daemon=True)
        loader.start()
        try:
            for _ in work:
                with state:
                    state.wait_for(lambda: bool(ready))
                    item, outcome = ready.popleft()
                    ahead -= len(item.chunks)
                    state.notify_all()
                if isinstance(outcome, BaseException):
                    raise outcome
                yield item, outcome
        finally:  # the run ended or failed: the loader stops after the file it is reading
            with state:
                stopped = True
                state.notify_all()
            loader.join()

    def _embed(self, batch: list[_Work], report: IngestReport, known_hashes: set[str]) -> _Written:
        """Vectors and rows of one batch (the main thread: the encoder), ready for :meth:`_store_batch`."""
        chunks = [chunk for item in batch for chunk in item.chunks]
        # Vectors already in the store (a renamed file, unchanged parts of an edited one) are reused.
        reusable_from = [
            c.content_hash for item in batch if item.previous or item.file_hash in known_hashes for c in item.chunks
        ]
        reused = self.store.embeddings_by_content(reusable_from)
        to_embed = [c.embed_text for c in chunks if c.content_hash not in reused]
        fresh = iter(self.embedder.embed_array(to_embed)) if to_embed else iter(())
        # one float32 matrix: Chroma refuses a batch that mixes the stored vectors (lists) with fresh arrays
        vectors = np.asarray(
            [reused[c.content_hash] if c.content_hash in reused else next(fresh) for c in chunks], dtype=np.float32
        )
        report.chunks_reused += len(chunks) - len(to_embed)
        ids = [self._chunk_id(item, chunk) for item in batch for chunk in item.chunks]
        new_ids = set(ids)
        return _Written(
            batch=list(batch),
            ids=ids,
            vectors=vectors,
            texts=[chunk.text for chunk in chunks],
            metadatas=[self._metadata(item, chunk) for item in batch for chunk in item.chunks],
            old=[i for item in batch for v in item.previous for i in v.ids if i not in new_ids],
        )

    def _store_batch(self, written: _Written) -> None:
        """Write one embedded batch (the writer thread). One write for the whole batch (each Chroma call has a
        large fixed cost); a file whose chunks did not all land is still detected by its chunk_count on the next
        run."""
        batch, ids, old = written.batch, written.ids, written.old
        with _writing(self.store.collection_name, len(batch)):
            self.store.upsert(ids, written.vectors, written.texts, written.metadatas)
            if self.lexical is not None:
                bodies = [body for item in batch for body in item.lexical_bodies]
                counts = [n for item in batch for n in item.token_counts] if self.count_tokens is not None else None
                self.lexical.add(ids, written.texts, written.metadatas, bodies, token_counts=counts)
            # only now that the new versions are complete do the old versions go
            self.store.delete(old)
            if self.lexical is not None:
                self.lexical.delete(old)

    def _account(self, written: _Written, report: IngestReport, known_hashes: set[str]) -> int:
        """Count a batch that was written (the main thread, after its write succeeded); returns its chunks."""
        report.chunks_added += len(written.ids)
        report.chunks_removed += len(written.old)
        for item in written.batch:
            if item.previous:
                report.files_updated += 1
            else:
                report.files_added += 1
            known_hashes.add(item.file_hash)
        return len(written.ids)

    def _chunk_id(self, item: _Work, chunk: Chunk) -> str:
        raw = f"{item.file.absolute}\0{item.file_hash}\0{self.signature}\0{chunk.index}"
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]

    def _metadata(self, item: _Work, chunk: Chunk) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "source": item.file.given,
            "source_abs": item.file.absolute,
            "file_name": os.path.basename(item.file.absolute),
            "heading": chunk.heading,
            "chunk_index": chunk.index,
            "chunk_count": len(item.chunks),
            "start": chunk.start,
            "end": chunk.end,
            "tokens": chunk.tokens,
            "content_hash": chunk.content_hash,
            "file_hash": item.file_hash,
            "signature": self.signature,
        }
        if chunk.page is not None:
            metadata["page"] = chunk.page
        if chunk.table_header:
            metadata["table_header"] = chunk.table_header
        if chunk.boxes:
            metadata[BOXES_KEY] = encode_boxes(chunk.boxes)
        if chunk.ocr_confidence is not None:
            metadata["ocr"] = True
            metadata["ocr_confidence"] = round(chunk.ocr_confidence, 3)
            metadata["low_confidence"] = chunk.ocr_confidence < LOW_CONFIDENCE
        return metadata


@contextmanager
def _writing(collection: str, files: int) -> Iterator[None]:
    """A failure of the store or the local index while writing becomes a :class:`StoreError` that says nothing is
    lost: the previous version of every file stays until its new one is complete, and the same run repairs it."""
    try:
        yield
    except RagError:
        raise
    except Exception as error:  # Chroma, SQLite and the disk raise anything
        raise StoreError(
            f"writing {files} file(s) into collection '{collection}' failed ({type(error).__name__}: {error}). "
            "Nothing already stored is lost (each file keeps its previous version); fix the cause (disk space, "
            "the Chroma server) and run the same ingest again to complete the store"
        ) from error


def _pages(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))

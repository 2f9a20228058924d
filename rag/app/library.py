"""The documents of a data dir: collections, their files with chunk counts, deleting a file, saving uploads safely,
ingesting with progress and re-ingesting a folder. What the UI's Documents tab calls; no UI code here.

>>> library = DocumentLibrary(Components(Settings.load()))
>>> [c.name for c in library.collections()]
>>> saved = library.save_uploads("docs", [("报告.pdf", Path("/tmp/x/报告.pdf"))])   # under data_dir/uploads/docs
>>> report = library.ingest("docs", saved.saved, on_progress=print)
>>> library.delete_document("docs", str(saved.saved[0]))

Uploads are written only below ``data_dir/uploads/<collection>``, each file held to ``ui_max_upload_mb``; how
they are saved safely (plain names, size limits, zip members checked) is :mod:`rag.app.uploads`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.app.root import Components
from rag.app.uploads import UPLOADS_FOLDER, UploadResult, is_inside, save_uploads
from rag.chunks import document_id
from rag.errors import ConfigError, DocumentNotFoundError

if TYPE_CHECKING:  # what an ingest reports; the edges name them through this module
    from ingest.pipeline import FileProblem, IngestProgress, IngestReport
    from ingest.watch import FolderWatcher, SyncRun
    from rag.settings import Settings

__all__ = [
    "CollectionInfo",
    "DocumentInfo",
    "DocumentLibrary",
    "DocumentText",
    "document_id",
]


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    chunks: int
    embedding_model: str


@dataclass(frozen=True)
class DocumentInfo:
    path: str
    """The file's absolute path as ingested (its identity in the store)."""
    file_name: str
    chunks: int
    complete: bool
    """False while an interrupted update left a partial version (the next ingest repairs it)."""
    uploaded: bool
    """The file lives in the collection's uploads folder (deleting it removes the file too)."""

    @property
    def id(self) -> str:
        """The document's id (:func:`document_id` of its path)."""
        return document_id(self.path)


@dataclass(frozen=True)
class DocumentText:
    """A document's text as stored (its chunks joined, overlaps removed), whole or a page range of it."""

    collection: str
    path: str
    file_name: str
    text: str
    pages: list[int]
    """The pages the text covers (empty for a file without pages)."""
    chunks: int
    """Chunks the text was joined from."""


class DocumentLibrary:
    """Collections and documents of the data dir (or Chroma server) of ``components`` (the composition root, whose
    loaded embedder every ingest run shares).

    ``folder_roots``: folders (and everything below them) a UI user may re-ingest besides the folders already
    recorded in a collection and its uploads folder.
    """

    def __init__(self, components: Components, *, folder_roots: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.components = components
        self.folder_roots = [Path(os.path.realpath(root)) for root in folder_roots]
        # one writer per process: two ingests into one collection would race on the same file versions
        self._write_lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        return self.components.settings

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.ui_max_upload_mb * 2**20)

    def uploads_dir(self, collection: str | None = None) -> Path:
        settings = self.components.settings_for(collection)
        return Path(os.path.realpath(settings.data_dir)) / UPLOADS_FOLDER / settings.collection

    # -- what is stored ------------------------------------------------------------------------------------
    def collections(self) -> list[CollectionInfo]:
        """Every collection of the store, by name, with its chunk count and embedding model."""
        client = self.components.chroma_client()
        found = []
        for collection in client.list_collections():
            metadata = collection.metadata or {}
            found.append(
                CollectionInfo(collection.name, collection.count(), str(metadata.get("embedding_model") or ""))
            )
        return sorted(found, key=lambda info: info.name)

    def documents(self, collection: str | None = None) -> list[DocumentInfo]:
        """The files of a collection, by file name, with their chunk counts (empty for a missing collection)."""
        settings = self.components.settings_for(collection)
        uploads = self.uploads_dir(settings.collection)
        found = []
        for path, versions in self.components.store(settings.collection).file_versions().items():
            found.append(
                DocumentInfo(
                    path=path,
                    file_name=os.path.basename(path),
                    chunks=sum(len(version.ids) for version in versions),
                    complete=any(version.complete for version in versions),
                    uploaded=is_inside(Path(os.path.realpath(path)), uploads),
                )
            )
        return sorted(found, key=lambda document: (document.file_name.lower(), document.path))

    def find_document(self, doc_id: str, collections: Iterable[str]) -> tuple[str, str]:
        """(collection, path) of the document ``doc_id`` (:func:`document_id`) among ``collections`` (those a caller
        may read), else a :class:`DocumentNotFoundError` saying where it looked and how to find ids. Read from each
        collection's local index (its files in one indexed query), not by listing the store."""
        searched = list(collections)
        for name in searched:
            for path in self.components.retriever(name).reader.sources():
                if document_id(path) == doc_id:
                    return name, path
        where = ", ".join(f"'{name}'" for name in searched) or "no collection"
        raise DocumentNotFoundError(
            f"no document '{doc_id}' in {where}: it may have been deleted or re-ingested elsewhere; "
            "list the documents for their ids"
        )

    def document_text(
        self, collection: str, path: str, *, first_page: int | None = None, last_page: int | None = None
    ) -> DocumentText:
        """The stored text of one document of ``collection`` (read from the local rows, never from the file), or
        of its pages ``first_page..last_page``; a range the document does not have is a :class:`ConfigError`."""
        chunks = self.components.lexical_index(collection).chunks_of_files([path])
        pages = sorted({chunk.page for chunk in chunks if chunk.page is not None})
        if first_page is not None or last_page is not None:
            if not pages:
                raise ConfigError(
                    f"{os.path.basename(path)} has no pages: read it whole (leave first_page and last_page out)"
                )
            low, high = first_page or pages[0], last_page or pages[-1]
            if low > high:
                raise ConfigError(f"first_page {low} is after last_page {high}: give a range low to high")
            if low > pages[-1] or high < pages[0]:
                raise ConfigError(f"{os.path.basename(path)} has pages {pages[0]} to {pages[-1]}, not {low} to {high}")
            chunks = [chunk for chunk in chunks if chunk.page is not None and low <= chunk.page <= high]
        parts: list[str] = []
        end = None
        for chunk in sorted(chunks, key=lambda chunk: (chunk.start, chunk.chunk_index)):
            if end is None or chunk.start >= end:  # neighbouring chunks share an overlap: keep it once
                parts.append(("\n" if parts and end is not None and chunk.start > end else "") + chunk.text)
            elif chunk.end > end:
                parts.append(chunk.text[end - chunk.start :])
            end = chunk.end if end is None else max(end, chunk.end)
        return DocumentText(
            collection=collection,
            path=path,
            file_name=os.path.basename(path),
            text="".join(parts),
            pages=sorted({chunk.page for chunk in chunks if chunk.page is not None}),
            chunks=len(chunks),
        )

    def delete_document(self, collection: str | None, path: str) -> int:
        """Remove one file's chunks from the store and the BM25 index (and the file, when it was uploaded).

        Returns the number of chunks removed; a path that is not in the collection is a :class:`ConfigError`.
        """
        settings = self.components.settings_for(collection)
        with self._write_lock:
            store = self.components.store(settings.collection)
            versions = store.file_versions().get(path)
            if not versions:
                raise ConfigError(
                    f"{os.path.basename(path) or path} is not in collection '{settings.collection}': "
                    "refresh the list and pick one of its documents"
                )
            ids = [chunk_id for version in versions for chunk_id in version.ids]
            store.delete(ids)
            self.components.lexical_index(settings.collection).delete(ids)
            uploaded = Path(os.path.realpath(path))
            if is_inside(uploaded, self.uploads_dir(settings.collection)) and uploaded.is_file():
                uploaded.unlink()  # else the next re-ingest of the uploads folder would bring it back
        return len(ids)

    # -- uploads -------------------------------------------------------------------------------------------
    def save_uploads(self, collection: str | None, files: Sequence[tuple[str, str | os.PathLike[str]]]) -> UploadResult:
        """Copy uploaded files (``(name the user gave, where the upload lies)``) into the collection's uploads
        folder; zips are unpacked there into a folder named after the zip. Bad files are reported, not raised."""
        from ingest.load import SUPPORTED_EXTENSIONS

        return save_uploads(
            self.uploads_dir(collection),
            files,
            max_bytes=self.max_upload_bytes,
            supported=SUPPORTED_EXTENSIONS,
            root=self.uploads_dir(None).parent,  # no write leaves the data dir's uploads folder
        )

    # -- ingesting -----------------------------------------------------------------------------------------
    def ingest(
        self,
        collection: str | None,
        paths: Sequence[str | os.PathLike[str]],
        *,
        on_progress: Callable[[IngestProgress], None] | None = None,
        on_problem: Callable[[FileProblem, bool], None] | None = None,
        gone: Sequence[str | os.PathLike[str]] = (),
    ) -> IngestReport:
        """Ingest ``paths`` into the collection (what ``ingest PATH...`` does), one run at a time per process;
        stored files at or below a ``gone`` path that the run does not find are removed.
        Symbolic links inside the folders are never followed: a user of the UI or the API cannot reach outside a
        folder through one, whatever ``follow_links`` says for the command line."""
        with self._write_lock:
            pipeline = self.components.ingest_pipeline(
                collection, on_progress=on_progress, on_problem=on_problem, follow_links=False
            )
            return pipeline.run([os.fspath(path) for path in paths], gone=gone)

    def watch(
        self,
        collection: str | None,
        folders: Sequence[str | os.PathLike[str]],
        *,
        on_start: Callable[[SyncRun], None] | None = None,
        on_run: Callable[[SyncRun], None] | None = None,
    ) -> FolderWatcher:
        """A watcher keeping ``folders`` in sync with the collection (``rag ui --watch``, ``rag serve --watch``):
        its runs take this library's write lock, so they and uploads never write at once. Not started: call its
        ``start()``, and ``stop()`` at shutdown."""

        def ingest(paths: Sequence[str], gone: Sequence[str]) -> IngestReport:
            return self.ingest(collection, paths, gone=gone)

        return self.components.folder_watcher(folders, ingest, follow_links=False, on_start=on_start, on_run=on_run)

    def ingest_uploads(
        self,
        collection: str | None,
        upload: UploadResult,
        *,
        on_progress: Callable[[IngestProgress], None] | None = None,
    ) -> IngestReport | None:
        """Ingest what :meth:`save_uploads` saved; new files that fail are removed again (the uploads folder holds
        what the collection holds). None when nothing was saved."""
        if not upload.saved:
            return None
        report = self.ingest(collection, upload.saved, on_progress=on_progress)
        failed = {os.path.realpath(problem.path) for problem in report.files_failed}
        for path in upload.created:
            if os.path.realpath(path) in failed:
                path.unlink(missing_ok=True)
        return report

    def reingest_folders(self, collection: str | None = None) -> list[Path]:
        """Folders a UI user may re-ingest: those the collection's files were found in, its uploads folder, and
        the ``folder_roots`` given on the command line. Never an arbitrary folder of the server."""
        folders = {Path(os.path.realpath(os.path.dirname(document.path))) for document in self.documents(collection)}
        uploads = self.uploads_dir(collection)
        if uploads.is_dir():
            folders.add(uploads)
        folders.update(root for root in self.folder_roots if root.is_dir())
        return sorted(folder for folder in folders if folder.is_dir())

    def reingest(
        self,
        collection: str | None,
        folder: str | os.PathLike[str],
        *,
        on_progress: Callable[[IngestProgress], None] | None = None,
    ) -> IngestReport:
        """Ingest ``folder`` again (changed files redone, vanished ones removed); it must be one of
        :meth:`reingest_folders` or inside a folder root, else :class:`ConfigError`."""
        wanted = Path(os.path.realpath(folder))
        allowed = wanted in self.reingest_folders(collection) or any(
            is_inside(wanted, root) for root in self.folder_roots
        )
        if not allowed:
            raise ConfigError(
                f"{folder} is not a folder of this collection: pick one from the list (start `rag ui` with "
                "--folder-root DIR to allow others)"
            )
        return self.ingest(collection, [wanted], on_progress=on_progress)

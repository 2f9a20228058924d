"""The documents of a data dir: collections, their files with chunk counts, deleting a file, saving uploads safely,
ingesting with progress and re-ingesting a folder. What the UI's Documents tab calls; no UI code here.

>>> library = DocumentLibrary(Settings.load())
>>> [c.name for c in library.collections()]
>>> saved = library.save_uploads("docs", [("报告.pdf", Path("/tmp/x/报告.pdf"))])   # under data_dir/uploads/docs
>>> report = library.ingest("docs", saved.saved, on_progress=print)
>>> library.delete_document("docs", str(saved.saved[0]))

Uploads are written only below ``data_dir/uploads/<collection>``: names are reduced to a plain file name (no
folders, no leading dots, no control or reserved characters), files are written to a hidden temporary name and
renamed into place (never through a symlink), and each file is held to ``ui_max_upload_mb``. Zips are unpacked
member by member with the same rules; members with absolute paths, ``..``, symlinks, or that unpack to more than
they declare or than the limit are refused.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import unicodedata
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rag.errors import ConfigError
from rag.settings import Settings

if TYPE_CHECKING:
    from ingest.pipeline import FileProblem, IngestProgress, IngestReport
    from rag.embeddings import SentenceTransformerEmbeddings

__all__ = [
    "CollectionInfo",
    "DocumentInfo",
    "DocumentLibrary",
    "UploadResult",
    "safe_file_name",
    "with_collection",
]

#: Folder under the data dir where uploads live, one subfolder per collection.
UPLOADS_FOLDER = "uploads"
#: More members than this in one zip is refused (a zip of many empty files is a denial of service too).
MAX_ZIP_MEMBERS = 5000
_BLOCK = 1 << 20
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_MAX_NAME_BYTES = 200


def with_collection(settings: Settings, collection: str | None) -> Settings:
    """``settings`` for another collection; a bad name is a :class:`ConfigError` that names the rule."""
    if not collection or collection == settings.collection:
        return settings
    from pydantic import ValidationError

    changed = settings.model_copy()
    try:
        changed.collection = collection  # validated on assignment: Chroma's naming rule
    except ValidationError as error:
        message = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors())
        raise ConfigError(message) from None
    return changed


def safe_file_name(name: str) -> str | None:
    """A plain file name from what a browser (or an attacker) sent; None when nothing usable is left.

    Only the last path component is kept (``../../evil.txt`` -> ``evil.txt``), leading dots go (no hidden files,
    no ``..``), control and reserved characters become ``_``, and the name is cut to 200 bytes keeping its
    extension. Chinese and other letters are kept.
    """
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_CHARACTERS.sub("_", name).strip().lstrip(".").strip()
    if not name:
        return None
    stem, extension = os.path.splitext(name)
    if len(extension.encode()) > 16:
        stem, extension = name, ""
    while len((stem + extension).encode()) > _MAX_NAME_BYTES and stem:
        stem = stem[:-1]
    return (stem + extension) if stem else None


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


@dataclass
class UploadResult:
    saved: list[Path] = field(default_factory=list)
    """Files written under the uploads folder, ready to ingest."""
    created: set[Path] = field(default_factory=set)
    """The saved files that did not exist before (removed again when they fail to ingest)."""
    problems: list[FileProblem] = field(default_factory=list)
    """Refused files and zip members, each with the reason."""
    notes: list[str] = field(default_factory=list)
    """Things done that the user should know (a renamed file)."""


class DocumentLibrary:
    """Collections and documents of ``settings``' data dir (or Chroma server).

    ``folder_roots``: folders (and everything below them) a UI user may re-ingest besides the folders already
    recorded in a collection and its uploads folder. ``share_embedder`` swaps the embedder of each ingest run for a
    process-wide loaded one (:meth:`rag.assistant.Assistant.shared_embedder`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        folder_roots: Sequence[str | os.PathLike[str]] = (),
        share_embedder: Callable[[SentenceTransformerEmbeddings], SentenceTransformerEmbeddings] | None = None,
    ) -> None:
        self.settings = settings
        self.folder_roots = [Path(os.path.realpath(root)) for root in folder_roots]
        self._share_embedder = share_embedder
        # one writer per process: two ingests into one collection would race on the same file versions
        self._write_lock = threading.Lock()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.ui_max_upload_mb * 2**20)

    def uploads_dir(self, collection: str | None = None) -> Path:
        settings = with_collection(self.settings, collection)
        return Path(os.path.realpath(settings.data_dir)) / UPLOADS_FOLDER / settings.collection

    # -- what is stored ------------------------------------------------------------------------------------
    def collections(self) -> list[CollectionInfo]:
        """Every collection of the store, by name, with its chunk count and embedding model."""
        from rag.store import connect_chroma

        client = connect_chroma(path=self.settings.chroma_path, url=self.settings.chroma_url)
        found = []
        for collection in client.list_collections():
            metadata = collection.metadata or {}
            found.append(
                CollectionInfo(collection.name, collection.count(), str(metadata.get("embedding_model") or ""))
            )
        return sorted(found, key=lambda info: info.name)

    def documents(self, collection: str | None = None) -> list[DocumentInfo]:
        """The files of a collection, by file name, with their chunk counts (empty for a missing collection)."""
        from rag.service import build_store

        settings = with_collection(self.settings, collection)
        uploads = self.uploads_dir(settings.collection)
        found = []
        for path, versions in build_store(settings).file_versions().items():
            found.append(
                DocumentInfo(
                    path=path,
                    file_name=os.path.basename(path),
                    chunks=sum(len(version.ids) for version in versions),
                    complete=any(version.complete for version in versions),
                    uploaded=_inside(Path(os.path.realpath(path)), uploads),
                )
            )
        return sorted(found, key=lambda document: (document.file_name.lower(), document.path))

    def delete_document(self, collection: str | None, path: str) -> int:
        """Remove one file's chunks from the store and the BM25 index (and the file, when it was uploaded).

        Returns the number of chunks removed; a path that is not in the collection is a :class:`ConfigError`.
        """
        from rag.service import build_lexical_index, build_store

        settings = with_collection(self.settings, collection)
        with self._write_lock:
            store = build_store(settings)
            versions = store.file_versions().get(path)
            if not versions:
                raise ConfigError(
                    f"{os.path.basename(path) or path} is not in collection '{settings.collection}': "
                    "refresh the list and pick one of its documents"
                )
            ids = [chunk_id for version in versions for chunk_id in version.ids]
            store.delete(ids)
            build_lexical_index(settings).delete(ids)
            uploaded = Path(os.path.realpath(path))
            if _inside(uploaded, self.uploads_dir(settings.collection)) and uploaded.is_file():
                uploaded.unlink()  # else the next re-ingest of the uploads folder would bring it back
        return len(ids)

    # -- uploads -------------------------------------------------------------------------------------------
    def save_uploads(self, collection: str | None, files: Sequence[tuple[str, str | os.PathLike[str]]]) -> UploadResult:
        """Copy uploaded files (``(name the user gave, where the upload lies)``) into the collection's uploads
        folder; zips are unpacked there into a folder named after the zip. Bad files are reported, not raised."""
        from ingest.load import SUPPORTED_EXTENSIONS
        from ingest.pipeline import FileProblem

        destination = self.uploads_dir(collection)
        destination.mkdir(parents=True, exist_ok=True)
        result = UploadResult()
        limit = self.max_upload_bytes
        for given, source in files:
            source = Path(source)
            name = safe_file_name(given)
            if name is None:
                result.problems.append(FileProblem(given, "the file name has no usable characters: rename it"))
                continue
            if name != given:
                result.notes.append(f"{given}: saved as {name} (file names may not hold folders or special characters)")
            try:
                size = source.stat().st_size
            except OSError as error:
                result.problems.append(FileProblem(given, f"the upload cannot be read ({error.strerror or error})"))
                continue
            extension = os.path.splitext(name)[1].lower()
            if size == 0:
                result.problems.append(FileProblem(given, "empty file: there is nothing to ingest"))
            elif size > limit:
                result.problems.append(FileProblem(given, _too_large(size, limit)))
            elif extension == ".zip":
                self._unpack_zip(given, source, destination / (os.path.splitext(name)[0] or "zip"), result)
            elif extension not in SUPPORTED_EXTENSIONS:
                result.problems.append(
                    FileProblem(
                        given,
                        f"unsupported format '{extension or '(no extension)'}': upload "
                        f"{', '.join(sorted(SUPPORTED_EXTENSIONS))} or a .zip of them",
                    )
                )
            else:
                with source.open("rb") as stream:
                    self._write(destination, name, stream, limit, result)
        return result

    def _write(self, folder: Path, name: str, stream: IO[bytes], limit: int, result: UploadResult) -> None:
        """Write ``stream`` to ``folder/name`` through a hidden temporary file; :class:`_TooLarge` (nothing left
        behind) when it holds more than ``limit`` bytes."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if not _inside(Path(os.path.realpath(folder)), self.uploads_dir(None).parent):
            raise ConfigError(f"refusing to write {name}: {folder} is not inside the uploads folder")
        temporary = folder / f".{uuid.uuid4().hex}.partial"
        written = 0
        try:
            with temporary.open("xb") as out:
                while block := stream.read(_BLOCK):
                    written += len(block)
                    if written > limit:
                        raise _TooLarge(written)
                    out.write(block)
            existed = target.exists() or target.is_symlink()
            os.replace(temporary, target)  # replaces a symlink itself, never what it points to
        finally:
            temporary.unlink(missing_ok=True)
        result.saved.append(target)
        if not existed:
            result.created.add(target)

    def _unpack_zip(self, given: str, source: Path, folder: Path, result: UploadResult) -> None:
        from ingest.load import SUPPORTED_EXTENSIONS
        from ingest.pipeline import FileProblem

        limit = self.max_upload_bytes
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as error:
            result.problems.append(FileProblem(given, f"not a readable zip file ({error})"))
            return
        with archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            declared = sum(member.file_size for member in members)
            if len(members) > MAX_ZIP_MEMBERS:
                result.problems.append(FileProblem(given, f"{len(members)} files: at most {MAX_ZIP_MEMBERS} per zip"))
                return
            if declared > limit:
                result.problems.append(FileProblem(given, "unpacks to " + _too_large(declared, limit)))
                return
            unpacked = 0
            for member in members:
                label = f"{given}/{member.filename}"
                parts = [part for part in member.filename.replace("\\", "/").split("/") if part not in ("", ".")]
                if member.filename.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.filename) or ".." in parts:
                    result.problems.append(FileProblem(label, "its path leaves the zip's folder: not unpacked"))
                    continue
                if stat.S_ISLNK(member.external_attr >> 16):
                    result.problems.append(FileProblem(label, "a symbolic link: not unpacked"))
                    continue
                if any(part.startswith(".") or part == "__MACOSX" for part in parts):
                    continue  # hidden files and macOS metadata are not documents (ingest skips them too)
                names = [safe_file_name(part) for part in parts]
                if not names or any(part is None for part in names):
                    result.problems.append(FileProblem(label, "the path has no usable characters: not unpacked"))
                    continue
                if os.path.splitext(parts[-1])[1].lower() not in SUPPORTED_EXTENSIONS:
                    result.problems.append(FileProblem(label, "unsupported format: not unpacked"))
                    continue
                if member.file_size == 0:
                    result.problems.append(FileProblem(label, "empty file: there is nothing to ingest"))
                    continue
                target_folder = folder.joinpath(*[str(part) for part in names[:-1]])
                try:
                    with archive.open(member) as stream:
                        # held to what the member declares and to what is left of the limit: a forged header
                        # cannot make a small zip unpack into a full disk
                        allowed = min(member.file_size, limit - unpacked)
                        self._write(target_folder, str(names[-1]), stream, allowed, result)
                except _TooLarge:
                    result.problems.append(FileProblem(label, "unpacks to more than it declares: not unpacked"))
                    continue
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
                    result.problems.append(FileProblem(label, f"cannot be unpacked ({error})"))
                    continue
                unpacked += member.file_size

    # -- ingesting -----------------------------------------------------------------------------------------
    def ingest(
        self,
        collection: str | None,
        paths: Sequence[str | os.PathLike[str]],
        *,
        on_progress: Callable[[IngestProgress], None] | None = None,
        on_problem: Callable[[FileProblem, bool], None] | None = None,
    ) -> IngestReport:
        """Ingest ``paths`` into the collection (what ``ingest PATH...`` does), one run at a time per process."""
        from rag.service import build_embedder, build_ingest_pipeline, build_store

        settings = with_collection(self.settings, collection)
        with self._write_lock:
            embedder = None
            if self._share_embedder is not None:
                embedder = self._share_embedder(build_embedder(settings, build_store(settings)))
            pipeline = build_ingest_pipeline(
                settings, embedder=embedder, on_progress=on_progress, on_problem=on_problem
            )
            return pipeline.run([os.fspath(path) for path in paths])

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
            _inside(wanted, root) for root in self.folder_roots
        )
        if not allowed:
            raise ConfigError(
                f"{folder} is not a folder of this collection: pick one from the list (start `rag ui` with "
                "--folder-root DIR to allow others)"
            )
        return self.ingest(collection, [wanted], on_progress=on_progress)


class _TooLarge(Exception):
    pass


def _too_large(size: int, limit: int) -> str:
    return (
        f"{size / 2**20:.1f} MB, more than the upload limit of {limit / 2**20:.0f} MB: "
        "split it, or raise RAG_UI_MAX_UPLOAD_MB"
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents

"""Saving what a browser user uploads, safely: plain names, size limits, zips unpacked with every member checked.

>>> result = save_uploads(Path("/data/uploads/docs"), [("报告.pdf", "/tmp/x/报告.pdf")],
...                       max_bytes=200 * 2**20, supported={".pdf", ".txt"})
>>> result.saved, result.problems

Uploads are written only below the folder given (and never outside ``root``): names are reduced to a plain file
name (no folders, no leading dots, no control or reserved characters), files are written to a hidden temporary
name and renamed into place (never through a symlink), and each file is held to ``max_bytes``. Zips are unpacked
member by member with the same rules; members with absolute paths, ``..``, symlinks, or that unpack to more than
they declare or than the limit are refused. Bad files are reported in :class:`UploadResult`, not raised.

Knows nothing of settings or the composition root: the caller says where to write and what is allowed.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
import uuid
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rag.errors import ConfigError

if TYPE_CHECKING:
    from ingest.pipeline import FileProblem

__all__ = [
    "MAX_ZIP_MEMBERS",
    "UPLOADS_FOLDER",
    "UploadResult",
    "is_inside",
    "safe_file_name",
    "save_uploads",
]

#: Folder under the data dir where uploads live, one subfolder per collection.
UPLOADS_FOLDER = "uploads"
#: More members than this in one zip is refused (a zip of many empty files is a denial of service too).
MAX_ZIP_MEMBERS = 5000
_BLOCK = 1 << 20
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_MAX_NAME_BYTES = 200


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


def save_uploads(
    folder: Path,
    files: Sequence[tuple[str, str | os.PathLike[str]]],
    *,
    max_bytes: int,
    supported: Collection[str],
    root: Path | None = None,
) -> UploadResult:
    """Copy uploaded files (``(name the user gave, where the upload lies)``) into ``folder``; zips are unpacked
    there into a folder named after the zip. Bad files are reported, not raised.

    ``max_bytes``: the most one file (or everything one zip unpacks to) may hold. ``supported``: the lower-case
    extensions (``".pdf"``) that may be saved. ``root``: the folder no write may leave, even through a symlinked
    subfolder (default ``folder``); a write outside it is a :class:`ConfigError`.
    """
    # imported here: the ingest pipeline pulls in numpy and the retrieval stack, which saving files does not need
    from ingest.pipeline import FileProblem

    destination = Path(folder)
    destination.mkdir(parents=True, exist_ok=True)
    boundary = Path(os.path.realpath(root if root is not None else destination))
    result = UploadResult()
    for given, source_name in files:
        source = Path(source_name)
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
        elif size > max_bytes:
            result.problems.append(FileProblem(given, _too_large(size, max_bytes)))
        elif extension == ".zip":
            _unpack_zip(
                given,
                source,
                destination / (os.path.splitext(name)[0] or "zip"),
                result,
                max_bytes=max_bytes,
                supported=supported,
                root=boundary,
            )
        elif extension not in supported:
            result.problems.append(
                FileProblem(
                    given,
                    f"unsupported format '{extension or '(no extension)'}': upload "
                    f"{', '.join(sorted(supported))} or a .zip of them",
                )
            )
        else:
            with source.open("rb") as stream:
                _write(destination, name, stream, max_bytes, result, root=boundary)
    return result


def _write(folder: Path, name: str, stream: IO[bytes], limit: int, result: UploadResult, *, root: Path) -> None:
    """Write ``stream`` to ``folder/name`` through a hidden temporary file; :class:`_TooLarge` (nothing left
    behind) when it holds more than ``limit`` bytes, :class:`ConfigError` when ``folder`` is not inside ``root``
    (a real path)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not is_inside(Path(os.path.realpath(folder)), root):
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


def _unpack_zip(
    given: str,
    source: Path,
    folder: Path,
    result: UploadResult,
    *,
    max_bytes: int,
    supported: Collection[str],
    root: Path,
) -> None:
    from ingest.pipeline import FileProblem

    limit = max_bytes
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
            if os.path.splitext(parts[-1])[1].lower() not in supported:
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
                    _write(target_folder, str(names[-1]), stream, allowed, result, root=root)
            except _TooLarge:
                result.problems.append(FileProblem(label, "unpacks to more than it declares: not unpacked"))
                continue
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
                result.problems.append(FileProblem(label, f"cannot be unpacked ({error})"))
                continue
            unpacked += member.file_size


class _TooLarge(Exception):
    pass


def _too_large(size: int, limit: int) -> str:
    return (
        f"{size / 2**20:.1f} MB, more than the upload limit of {limit / 2**20:.0f} MB: "
        "split it, or raise RAG_UI_MAX_UPLOAD_MB"
    )


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (both already resolved: no ``..``, no links)."""
    return path == folder or folder in path.parents

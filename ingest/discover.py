"""Finding the files to ingest: recursive, hidden files skipped, symbolic links not followed out of a folder
unless asked (and safe with loops when they are), names that are not valid UTF-8 kept and shown escaped."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DiscoveredFile", "Discovery", "discover", "file_sha256", "is_ignored_name", "printable_path"]

_TEMPORARY_SUFFIXES = (".swp", ".swo", ".swx", ".tmp", ".temp", ".crdownload", ".part", ".partial", ".download")
"""Editors' swap files, half-written downloads and the files programs save to before renaming them over the real
one: never a document of the user's, and gone again within seconds."""


def printable_path(path: str) -> str:
    """``path`` as text any store and terminal takes: a name whose bytes are not UTF-8 (common on disks and zips
    from other systems) has them written as ``\\xff`` escapes; every other name is unchanged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class DiscoveredFile:
    """A regular file found under one of the paths the user named."""

    given: str
    """The path as the user would write it: the named root joined with the path below it (printable)."""
    absolute: str
    """Absolute, normalised (symlinks kept as named), printable: the file's identity in the store."""
    size: int
    path: str = ""
    """The path to open (the operating system's own, which :attr:`absolute` escapes when it is not UTF-8)."""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.absolute)


@dataclass
class Discovery:
    files: list[DiscoveredFile] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    """Absolute folders that were walked: stored files under them that are gone get removed."""
    missing: list[str] = field(default_factory=list)
    """Named paths that do not exist."""
    links: list[str] = field(default_factory=list)
    """Symbolic links met inside a named folder and not followed (``follow_links`` off)."""


def is_ignored_name(name: str) -> bool:
    """A file or folder name that is never a document: hidden (``.name``, also emacs' ``.#name`` locks and vim's
    ``.name.swp``), a backup (``name~``), an Office owner file (``~$name.docx``, which has a document's extension
    but only the name of whoever has it open), vim's write test ``4913``, or a temporary or half-downloaded file
    (``.tmp``, ``.crdownload``, ``.part``, ...)."""
    return (
        name.startswith((".", "~$"))
        or name.endswith("~")
        or name == "4913"
        or name.lower().endswith(_TEMPORARY_SUFFIXES)
    )


def discover(paths: Sequence[str | os.PathLike[str]], *, follow_links: bool = False) -> Discovery:
    """Walk ``paths`` (files or folders) in a stable order.

    Folders are walked recursively. A symbolic link inside a folder is not followed (it is listed in
    :attr:`Discovery.links`) unless ``follow_links``, so a folder never reaches outside itself by a link; with
    ``follow_links`` no folder is visited twice (loops end). A path named explicitly is taken even when it is a
    link. Hidden files and folders below a named folder are skipped, and so are editors' temporary files
    (:func:`is_ignored_name`); such a file named explicitly is taken.
    """
    found = Discovery()
    seen_files: set[str] = set()

    def add(given: str, absolute: str) -> None:
        seen_files.add(absolute)
        try:
            size = os.path.getsize(absolute)
        except OSError:
            size = 0
        found.files.append(DiscoveredFile(printable_path(given), printable_path(absolute), size, path=absolute))

    for raw in paths:
        given = os.fspath(raw)
        absolute = os.path.abspath(given)
        if os.path.isfile(absolute):
            if absolute not in seen_files:
                add(given, absolute)
            continue
        if not os.path.isdir(absolute):
            found.missing.append(printable_path(given))
            continue
        found.roots.append(printable_path(absolute))
        visited_dirs: set[tuple[int, int]] = set()
        for folder, subfolders, filenames in os.walk(absolute, followlinks=follow_links):
            stat = os.stat(folder)
            key = (stat.st_dev, stat.st_ino)
            if key in visited_dirs:  # a symlink loop or a second link to a folder already walked
                subfolders[:] = []
                continue
            visited_dirs.add(key)
            relative_folder = os.path.relpath(folder, absolute)
            kept = []
            for name in sorted(subfolders):
                if is_ignored_name(name):
                    continue
                if not follow_links and os.path.islink(os.path.join(folder, name)):
                    found.links.append(printable_path(os.path.normpath(os.path.join(given, relative_folder, name))))
                    continue
                kept.append(name)
            subfolders[:] = kept
            for name in sorted(filenames):
                if is_ignored_name(name):
                    continue
                file_absolute = os.path.join(folder, name)
                file_given = os.path.normpath(os.path.join(given, relative_folder, name))
                if not follow_links and os.path.islink(file_absolute):
                    found.links.append(printable_path(file_given))
                    continue
                if file_absolute in seen_files or not os.path.isfile(file_absolute):
                    continue  # broken links, sockets, fifos
                add(file_given, file_absolute)
    return found


def file_sha256(path: str) -> str:
    """Content hash of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

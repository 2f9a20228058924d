"""Finding the files to ingest: recursive, hidden files skipped, safe with symlink loops."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DiscoveredFile", "Discovery", "discover", "file_sha256"]


@dataclass(frozen=True)
class DiscoveredFile:
    """A regular file found under one of the paths the user named."""

    given: str
    """The path as the user would write it: the named root joined with the path below it."""
    absolute: str
    """Absolute, normalised (symlinks kept as named): the file's identity in the store."""
    size: int


@dataclass
class Discovery:
    files: list[DiscoveredFile] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    """Absolute folders that were walked: stored files under them that are gone get removed."""
    missing: list[str] = field(default_factory=list)
    """Named paths that do not exist."""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def discover(paths: Sequence[str | os.PathLike[str]]) -> Discovery:
    """Walk ``paths`` (files or folders) in a stable order.

    Folders are walked recursively, following symlinks but never visiting the same folder twice (loops end).
    Hidden files and folders below a named folder are skipped; a hidden file named explicitly is taken.
    """
    found = Discovery()
    seen_files: set[str] = set()
    for raw in paths:
        given = os.fspath(raw)
        absolute = os.path.abspath(given)
        if os.path.isfile(absolute):
            if absolute not in seen_files:
                seen_files.add(absolute)
                found.files.append(DiscoveredFile(given, absolute, os.path.getsize(absolute)))
            continue
        if not os.path.isdir(absolute):
            found.missing.append(given)
            continue
        found.roots.append(absolute)
        visited_dirs: set[tuple[int, int]] = set()
        for folder, subfolders, filenames in os.walk(absolute, followlinks=True):
            stat = os.stat(folder)
            key = (stat.st_dev, stat.st_ino)
            if key in visited_dirs:  # a symlink loop or a second link to a folder already walked
                subfolders[:] = []
                continue
            visited_dirs.add(key)
            subfolders[:] = sorted(d for d in subfolders if not _hidden(d))
            relative_folder = os.path.relpath(folder, absolute)
            for name in sorted(filenames):
                if _hidden(name):
                    continue
                file_absolute = os.path.join(folder, name)
                if file_absolute in seen_files or not os.path.isfile(file_absolute):
                    continue  # broken links, sockets, fifos
                seen_files.add(file_absolute)
                file_given = os.path.normpath(os.path.join(given, relative_folder, name))
                try:
                    size = os.path.getsize(file_absolute)
                except OSError:
                    size = 0
                found.files.append(DiscoveredFile(file_given, file_absolute, size))
    return found


def file_sha256(path: str) -> str:
    """Content hash of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""The few errors whose messages are shown to users.

Library code raises these with a message that says what went wrong *and what to do next*; the CLI and the UI
turn them into output and exit codes, nowhere else.
"""

from __future__ import annotations

import errno
import os
import re

__all__ = [
    "BusyError",
    "ConfigError",
    "ContextOverflowError",
    "DiskFullError",
    "DocumentNotFoundError",
    "EmptyStoreError",
    "ModelIntegrityError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "NotFoundError",
    "RagError",
    "RequestError",
    "StoreDamagedError",
    "StoreError",
    "disk_full_reason",
    "is_damaged_database",
]


class RagError(Exception):
    """Base class: the message is meant for the user."""


class ConfigError(RagError, ValueError):
    """A setting, a flag or a config file is wrong."""


class RequestError(ConfigError):
    """An argument of a request is wrong (a page number past the end, a chunk id of another document);
    :attr:`param` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotFoundError(RagError, LookupError):
    """What a request names does not exist, or not for this caller (a document of a collection it cannot read);
    :attr:`param` names the argument."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DocumentNotFoundError(NotFoundError):
    """No document with that id in the collections the caller may read (deleted, or an id from elsewhere);
    :attr:`param` is ``id``."""

    def __init__(self, message: str, *, param: str | None = "id") -> None:
        super().__init__(message, param=param)


class ModelNotFoundError(RagError):
    """A model name could not be resolved to files on this machine (and could not be downloaded)."""


class ModelIntegrityError(ModelNotFoundError):
    """A model file does not match its published size and SHA-256 (a damaged or altered copy): it is never loaded,
    and the message names the file, both hashes and how to get a good copy. A :class:`ModelNotFoundError`, so every
    place that reports a missing model reports this one too."""


class BusyError(RagError):
    """Every answer slot is taken and the queue is full: retry after :attr:`retry_after_s` seconds."""

    def __init__(self, message: str, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreError(RagError):
    """The vector store cannot be opened or written."""


class ModelMismatchError(StoreError):
    """The collection was built with another embedding model or chunking; mixing would corrupt retrieval."""


class EmptyStoreError(StoreError):
    """Nothing has been ingested into the collection yet."""


class DiskFullError(StoreError):
    """No room to write (a full disk, a quota, a file size limit): nothing stored is lost, the same run repeated
    once there is room completes it."""


class StoreDamagedError(StoreError):
    """A file of the store is damaged (not a database, malformed); the message names it and how to rebuild it."""


_FULL_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
                errno.EFBIG: "a file reached the largest size allowed"}  # fmt: skip
# What Chroma (Rust), SQLite and tantivy say instead of an errno: SQLITE_FULL, and "os error N" of Rust's io errors.
_FULL_TEXTS = (
    (re.compile(r"database or disk is full|no space left on device|os error 28\b", re.I), errno.ENOSPC),
    (re.compile(r"disk quota exceeded|os error 122\b", re.I), errno.EDQUOT),
    (re.compile(r"file too large|os error 27\b", re.I), errno.EFBIG),
)
# SQLite's answer to a write() that failed for another reason than ENOSPC (EFBIG among them): SQLITE_IOERR_WRITE.
_IO_ERROR = re.compile(r"disk I/O error", re.I)
# SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), as Python's sqlite3 and Chroma's Rust bindings word them.
_DAMAGED = re.compile(r"database disk image is malformed|file is not a database|\(code: (?:11|26)\)", re.I)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def disk_full_reason(error: BaseException, path: str | os.PathLike[str] | None = None) -> str | None:
    """Why ``error`` (or what caused it) means there is no room to write, in a few words; None if it does not.

    An ``OSError`` says so by its errno (ENOSPC, EDQUOT, EFBIG); Chroma, SQLite and tantivy only by their messages.
    SQLite reports a write refused for a file size limit as a plain "disk I/O error": that counts as no room when
    this process has a file size limit (``ulimit -f``) or the disk under ``path`` has less than 64 MiB free.
    """
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in _FULL_ERRNOS:
            return _FULL_ERRNOS[link.errno]
        for pattern, code in _FULL_TEXTS:
            if pattern.search(str(link)):
                return _FULL_ERRNOS[code]
    if any(_IO_ERROR.search(str(link)) for link in _chain(error)):
        import resource
        import shutil

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"a file reached this process's file size limit, ulimit -f: {soft:,} bytes"
        if path is not None:
            try:
                free = shutil.disk_usage(_existing_parent(os.fspath(path))).free
            except OSError:
                return None
            if free < 64 * 2**20:
                return f"no space left on the disk, {free / 2**20:.0f} MiB free"
    return None


def is_damaged_database(error: BaseException) -> bool:
    """``error`` (or its cause) says a database file is damaged: malformed, or not a database at all."""
    return any(_DAMAGED.search(str(link)) for link in _chain(error))


def _existing_parent(path: str) -> str:
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path or "."


class ContextOverflowError(RagError):
    """A prompt plus the tokens reserved for the answer do not fit the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int = 0, max_tokens: int = 0, context_window: int = 0) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window

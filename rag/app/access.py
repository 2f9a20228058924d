"""Who may read and write which collections: API keys, each scoped to collections, from a TOML file.

>>> policy = AccessPolicy(keys_file=Path("keys.toml"))         # a broken file is a ConfigError naming the field
>>> grant = policy.grant_for("the key a client sent")          # None: no such key (the surface answers 401)
>>> grant.can_read("hr"), grant.can_write("hr")

The file holds one table per key holder::

    [keys.hr-team]
    key_sha256 = "9f86d08..."   # or key = "..."; the digest keeps the secret out of the file
    collections = ["hr"]       # ["*"]: every collection
    write = false              # true: may upload and delete

Every surface (the HTTP server, the MCP server) asks :meth:`AccessPolicy.grant_for` once per request and checks the
:class:`Grant` it gets before touching a collection; what a grant cannot read, the surface treats as absent. The
file is read again when it changes (checked on each :meth:`~AccessPolicy.grant_for`); a file that no longer parses
keeps the last good keys and logs why. Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, so
neither a key's content nor its length shows in the time an answer takes, and no key is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from rag.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pydantic-settings brings tomli there
    import tomli as tomllib

__all__ = ["ALL_COLLECTIONS", "AccessPolicy", "Grant", "hash_key"]

logger = logging.getLogger("rag.access")

#: In a grant's collections: every collection, also those made later.
ALL_COLLECTIONS = "*"
#: The holder name of the single key (``RAG_API_KEY`` / ``--api-key-file``), and of everyone when no key is set.
SINGLE_KEY_HOLDER = "api-key"
OPEN_HOLDER = "anyone"

_COLLECTION_NAME = re.compile(r"[A-Za-z0-9._-]{1,512}")  # the characters Chroma allows in a name
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def hash_key(key: str) -> str:
    """The ``key_sha256`` of ``key`` (hex), as ``printf %s KEY | sha256sum`` prints it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Grant:
    """What one key holder may do: read ``collections`` (``*``: all), and upload and delete there if ``write``."""

    holder: str
    """The holder's name (the table in the keys file): safe to log, unlike the key."""
    collections: frozenset[str]
    write: bool = False

    @classmethod
    def everything(cls, holder: str) -> Grant:
        return cls(holder, frozenset({ALL_COLLECTIONS}), write=True)

    def can_read(self, collection: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection in self.collections

    def can_write(self, collection: str) -> bool:
        return self.write and self.can_read(collection)

    def readable(self, collections: Iterable[str]) -> list[str]:
        """Those of ``collections`` this grant may read, in their order."""
        return [name for name in collections if self.can_read(name)]


# -- the file ------------------------------------------------------------------------------------------------
class _KeyTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # write = "yes" is a mistake, not true

    key: SecretStr | None = None
    key_sha256: str | None = None
    collections: Annotated[list[str], Field(min_length=1)]
    write: bool = False

    @field_validator("key")
    @classmethod
    def _plain_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            raw = key.get_secret_value()
            if not raw.strip():
                raise ValueError("the key is empty: write a long random key (e.g. `openssl rand -hex 32`)")
            if raw != raw.strip():
                raise ValueError("the key starts or ends with white space, which clients cannot send: remove it")
        return key

    @field_validator("key_sha256")
    @classmethod
    def _digest(cls, digest: str | None) -> str | None:
        if digest is not None and not _SHA256.fullmatch(digest):
            raise ValueError("not a SHA-256 digest: give the 64 hex digits that `printf %s KEY | sha256sum` prints")
        return digest.lower() if digest is not None else None

    @field_validator("collections")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != ALL_COLLECTIONS and not _COLLECTION_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a collection name: use a collection's name, or '*' for all")
        return names

    @model_validator(mode="after")
    def _one_key(self) -> _KeyTable:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError('give exactly one of key = "..." and key_sha256 = "..."')
        return self

    def digest(self) -> bytes:
        if self.key is not None:
            return _digest_of(self.key.get_secret_value())
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: dict[str, _KeyTable] = Field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    grant: Grant


def _read_keys_file(path: Path, reserved: Sequence[_Entry] = ()) -> list[_Entry]:
    """The entries of the keys file; a :class:`ConfigError` naming the file, the table and the field otherwise.
    ``reserved``: keys given elsewhere (the single key) that the file must not repeat."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the API keys file {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"the API keys file {path} is not valid TOML: {error}") from None
    try:
        parsed = _KeysFile.model_validate(data)
    except ValidationError as error:
        # never pydantic's own text: it quotes the input, and the input may be a key
        problems = [_describe(problem["loc"], problem["type"], str(problem["msg"])) for problem in error.errors()]
        raise ConfigError(f"the API keys file {path} is invalid: " + "; ".join(problems)) from None
    if not parsed.keys:
        raise ConfigError(
            f"the API keys file {path} holds no keys: add a table such as [keys.NAME] with key_sha256 and collections"
        )
    entries: list[_Entry] = []
    seen = {entry.digest: f"the single API key ({entry.grant.holder})" for entry in reserved}
    for holder, table in parsed.keys.items():
        digest = table.digest()
        field = "key" if table.key is not None else "key_sha256"
        if digest in seen:
            raise ConfigError(
                f"the API keys file {path} is invalid: [keys.{holder}] {field}: the same key as {seen[digest]}; "
                "give every holder a key of its own"
            )
        seen[digest] = f"[keys.{holder}]"
        entries.append(_Entry(digest, Grant(holder, frozenset(table.collections), write=table.write)))
    return entries


def _describe(location: tuple[int | str, ...], kind: str, message: str) -> str:
    parts = [str(part) for part in location]
    if parts[:1] == ["keys"] and len(parts) >= 2:
        table, field = f"[keys.{parts[1]}]", ".".join(parts[2:3]) or "key/key_sha256"
    else:
        table, field = "top level", ".".join(parts[:1])
    if kind == "extra_forbidden":
        known = "key, key_sha256, collections, write" if table != "top level" else "[keys.NAME] tables"
        message = f"unknown field (known: {known})"
    elif kind == "missing":
        message = "missing: every key needs it"
    message = message.removeprefix("Value error, ")
    return f"{table} {field}: {message}" if field else f"{table}: {message}"


# -- the policy ----------------------------------------------------------------------------------------------
class AccessPolicy:
    """The keys a server accepts and the :class:`Grant` of each.

    ``api_key``: the single key (all collections, write allowed). ``keys_file``: the TOML file of scoped keys. Both
    may be given: both are accepted (the file must not repeat the single key). Neither: no key is needed and every
    request gets every collection (servers then stay on loopback).
    """

    def __init__(self, *, api_key: str | None = None, keys_file: Path | None = None) -> None:
        self.keys_file = keys_file
        self._single: list[_Entry] = []
        if api_key is not None:
            self._single.append(_Entry(_digest_of(api_key), Grant.everything(SINGLE_KEY_HOLDER)))
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._entries: list[_Entry] = list(self._single)
        if keys_file is not None:
            self._signature = _signature(keys_file)
            self._entries = [*self._single, *_read_keys_file(keys_file, self._single)]

    @property
    def requires_key(self) -> bool:
        """Whether a request needs a key at all."""
        return bool(self._single) or self.keys_file is not None

    def holders(self) -> list[str]:
        """The names of the current key holders (never the keys)."""
        self._reload_if_changed()
        return [entry.grant.holder for entry in self._entries]

    def grant_for(self, presented: str | None) -> Grant | None:
        """The grant of the key a client presented; None when it is missing or no holder has it. Without any
        key configured, everyone gets every collection."""
        if not self.requires_key:
            return Grant.everything(OPEN_HOLDER)
        self._reload_if_changed()
        if not presented:
            return None
        digest = _digest_of(presented)
        found: Grant | None = None
        for entry in self._entries:  # every entry compared: the time does not say which one matched
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.grant
        return found

    def _reload_if_changed(self) -> None:
        path = self.keys_file
        if path is None:
            return
        try:
            signature = _signature(path)
        except OSError as error:
            signature = (-1, -1, -1)
            reason: str | None = f"cannot read the API keys file {path}: {error.strerror or error}"
        else:
            reason = None
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:  # another request reloaded it meanwhile
                return
            self._signature = signature  # a broken version is reported once, not on every request
            if reason is not None:
                logger.error("%s; keeping the keys read before (%s)", reason,
                             ", ".join(e.grant.holder for e in self._entries))  # fmt: skip
                return
            try:
                entries = _read_keys_file(path, self._single)
            except ConfigError as error:
                logger.error("%s; keeping the keys read before (%s)", error,
                             ", ".join(e.grant.holder for e in self._entries))  # fmt: skip
                return
            self._entries = [*self._single, *entries]
            holders = ", ".join(entry.grant.holder for entry in entries)
            logger.warning("reloaded the API keys file %s: holders %s", path, holders)


def _signature(path: Path) -> tuple[int, int, int]:
    """What changes when the file is written or replaced (an editor's save, a rename over it)."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size, stat.st_ino

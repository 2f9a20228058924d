"""Backends registered by name, built lazily: a backend is one module and one registration.

>>> LLM_BACKENDS.register("my_runtime", "my_package.backend:MyBackend")   # imported at its first use
>>> Settings(llm_backend="my_runtime")                                    # and chosen by name like the built-ins

A registry maps a name to an object (a class or a builder function) or to ``"module:attribute"``, imported only
when that backend is first asked for, so ``import rag`` loads no backend's libraries.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Generic, TypeVar

from rag.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> backends of one kind (``kind`` and ``setting`` name them in errors: ``LLM backend``,
    ``RAG_LLM_BACKEND``)."""

    def __init__(self, kind: str, setting: str, entries: dict[str, T | str] | None = None) -> None:
        self.kind = kind
        self.setting = setting
        self._entries: dict[str, T | str] = dict(entries or {})
        self._lock = threading.Lock()

    def register(self, name: str, target: T | str) -> None:
        """Add (or replace) a backend: an object, or ``"module:attribute"`` imported at its first use."""
        with self._lock:
            self._entries[name] = target

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The backend registered as ``name`` (imported now if it was registered by path)."""
        with self._lock:
            target = self._entries.get(name)
        if target is None:
            raise ConfigError(f"{self.setting}={name!r} is not a {self.kind}: choose among {', '.join(self.names())}")
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            loaded: Any = getattr(importlib.import_module(module), attribute)
            with self._lock:
                self._entries[name] = loaded
            return loaded
        return target

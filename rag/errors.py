"""The few errors whose messages are shown to users.

Library code raises these with a message that says what went wrong *and what to do next*; the CLI and the UI
turn them into output and exit codes, nowhere else.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContextOverflowError",
    "EmptyStoreError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "RagError",
    "StoreError",
]


class RagError(Exception):
    """Base class: the message is meant for the user."""


class ConfigError(RagError, ValueError):
    """A setting, a flag or a config file is wrong."""


class ModelNotFoundError(RagError):
    """A model name could not be resolved to files on this machine (and could not be downloaded)."""


class StoreError(RagError):
    """The vector store cannot be opened or written."""


class ModelMismatchError(StoreError):
    """The collection was built with another embedding model or chunking; mixing would corrupt retrieval."""


class EmptyStoreError(StoreError):
    """Nothing has been ingested into the collection yet."""


class ContextOverflowError(RagError):
    """A prompt plus the tokens reserved for the answer do not fit the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int = 0, max_tokens: int = 0, context_window: int = 0) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window

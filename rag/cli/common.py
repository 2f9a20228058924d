"""What every command shares: flags become :class:`Settings` (a bad value is a usage error), third-party noise is
quieted. Nothing here knows a command."""

from __future__ import annotations

from typing import Any

import click

from rag.errors import ConfigError
from rag.settings import Settings

__all__ = ["quiet_third_party", "settings_from_flags", "show_watch_runs"]


def quiet_third_party() -> None:
    """Progress bars and notices of libraries we call are noise on our command line."""
    import os
    import warnings

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


def settings_from_flags(**flags: Any) -> Settings:
    """Settings with the command's flags on top (unset flags are ``None``); a bad value is a usage error."""
    try:
        return Settings.load(**flags)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


def show_watch_runs() -> None:
    """Each run of a folder watcher (`rag ui --watch`, `rag serve --watch`) as one line on stderr: what changed,
    what was written, how long it took, each failed file with its reason."""
    import logging
    import sys

    watch_log = logging.getLogger("rag.watch")
    if not watch_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("watch: %(message)s"))
        watch_log.addHandler(handler)
        watch_log.setLevel(logging.INFO)
        watch_log.propagate = False

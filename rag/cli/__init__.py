"""The command line: ``rag`` (ingest, ask, eval, ui) and ``ingest``; flags become Settings, errors become
messages and exit codes here, and everything else is the library's."""

from rag.cli.main import cli, main

__all__ = ["cli", "main"]

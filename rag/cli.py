"""The ``rag`` command group: ``rag ingest`` now; ``ask``, ``ui``, ``serve`` and ``eval`` join it later."""

from __future__ import annotations

import click

from ingest.cli import ingest_command

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chinese-mixtral-rag")
def cli() -> None:
    """Question answering over your own documents with Chinese-Mixtral-Instruct.

    \b
    Examples:
      rag ingest ./docs
      rag ingest ./docs --collection work --json
    """


cli.add_command(ingest_command)


def main() -> None:
    cli(prog_name="rag")

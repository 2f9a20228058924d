"""Ingestion: documents in folders -> chunks with headings and pages -> embeddings -> Chroma.

from rag import Settings
from ingest import ingest

report = ingest(["./docs"], Settings(data_dir="data", collection="docs"))
print(report.files_added, report.chunks_total)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ingest.pipeline import FileProblem, IngestProgress, IngestReport

if TYPE_CHECKING:
    from rag.settings import Settings

__all__ = ["FileProblem", "IngestProgress", "IngestReport", "ingest"]


def ingest(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    settings: Settings | None = None,
    *,
    reset: bool = False,
    on_progress: Callable[[IngestProgress], None] | None = None,
    on_problem: Callable[[FileProblem, bool], None] | None = None,
) -> IngestReport:
    """Ingest files and folders into the collection named by ``settings``; only what changed is redone.

    Raises :class:`rag.ModelMismatchError` when the collection was built with another embedding model (pass
    ``reset=True`` to rebuild it). Files that cannot be read are listed in ``report.files_failed``.
    """
    from rag.service import build_ingest_pipeline
    from rag.settings import Settings

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    pipeline = build_ingest_pipeline(settings or Settings(), on_progress=on_progress, on_problem=on_problem)
    return pipeline.run(list(paths), reset=reset)

"""Ingestion: documents in folders -> chunks with headings and pages -> embeddings -> Chroma and the lexical index.

discover (hash) -> load (elements with page and heading) -> chunk (token-sized, offsets) -> pipeline (embed in
batches, write per file atomically). Collaborators come in; nothing here builds them: the composition root does.

>>> from rag import Settings, build_ingest_pipeline
>>> report = build_ingest_pipeline(Settings(data_dir="data", collection="docs")).run(["./docs"])
>>> print(report.files_added, report.chunks_total)
"""

from __future__ import annotations

from ingest.pipeline import FileProblem, IngestPipeline, IngestProgress, IngestReport

__all__ = ["FileProblem", "IngestPipeline", "IngestProgress", "IngestReport"]

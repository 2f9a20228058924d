"""Ingest jobs of `rag serve`: an upload is saved, then ingested in a thread; the job reports progress and the
per-file problems until it is done."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.app.library import DocumentLibrary, IngestProgress
    from rag.app.uploads import UploadResult

__all__ = ["IngestJob", "IngestJobs"]


@dataclass
class IngestJob:
    id: str
    collection: str
    status: str = "queued"
    """queued, running, done or failed."""
    files_done: int = 0
    files_total: int = 0
    chunks_done: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "ingest.job",
            "collection": self.collection,
            "status": self.status,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "chunks_done": self.chunks_done,
            "problems": self.problems,
            "report": self.report,
            "error": self.error,
        }


class IngestJobs:
    """The jobs of this process (kept until it exits; the newest 100)."""

    def __init__(self, library: DocumentLibrary) -> None:
        self.library = library
        self._jobs: dict[str, IngestJob] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> IngestJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, collection: str, upload: UploadResult) -> IngestJob:
        """Ingest what was saved, in a thread; the upload's own problems are the job's first ones."""
        job = IngestJob(f"ingest-{uuid.uuid4().hex[:16]}", collection)
        job.problems = [{"file": problem.path, "error": problem.error} for problem in upload.problems]
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > 100:
                self._jobs.pop(next(iter(self._jobs)))
        threading.Thread(target=self._run, args=(job, upload), name=job.id, daemon=True).start()
        return job

    def _run(self, job: IngestJob, upload: UploadResult) -> None:
        job.status = "running"

        def on_progress(event: IngestProgress) -> None:
            job.files_done, job.files_total, job.chunks_done = event.files_done, event.files_total, event.chunks_done

        try:
            report = self.library.ingest_uploads(job.collection, upload, on_progress=on_progress)
        except Exception as error:  # reported in the job: the server keeps serving
            job.status, job.error = "failed", str(error)
            return
        if report is not None:
            job.report = report.to_dict()
            job.problems += [{"file": problem.path, "error": problem.error} for problem in report.files_failed]
        job.status = "done"

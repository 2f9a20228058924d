"""The ``ingest`` command (also ``rag ingest``): only calls the library and renders what it reports."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag.cli.common import quiet_third_party, settings_from_flags
from rag.errors import ConfigError, RagError

if TYPE_CHECKING:
    from rag.app.library import FileProblem, IngestProgress, IngestReport, SyncRun
    from rag.settings import Settings

__all__ = ["ingest_command", "main"]


class _ProgressView:
    """A rich progress bar on a terminal: files, chunks, rate and time left (by bytes). Without a terminal (a log,
    ``--json``) one plain line every :attr:`heartbeat_s` seconds, so long work always says it is working."""

    heartbeat_s = 15.0

    def __init__(self, enabled: bool, *, heartbeat: bool = False) -> None:
        self.enabled = enabled
        self.heartbeat = heartbeat and not enabled
        self._progress: Any = None
        self._task: Any = None
        self._started = time.monotonic()
        self._last: IngestProgress | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def __enter__(self) -> _ProgressView:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]ingest[/]"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[files]} files · {task.fields[chunks]} chunks · {task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[reading]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("ingest", total=None, files="0/?", chunks=0, rate="", reading="")
        elif self.heartbeat:
            self._beater = threading.Thread(target=self._beat, name="ingest-heartbeat", daemon=True)
            self._beater.start()
        return self

    def update(self, event: IngestProgress) -> None:
        self._last = event
        if not self._progress:
            return
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{event.chunks_done / elapsed:.1f} chunks/s" if elapsed > 0 and event.chunks_done else ""
        reading = ""
        if event.reading and event.pages > 1:  # a long PDF or a multi-page scan: say how far it is
            reading = f"· {Path(event.reading).name}: page {event.page}/{event.pages}"
            if event.ocr_pages:
                reading += f" ({event.ocr_pages} by OCR)"
        self._progress.update(
            self._task,
            total=max(event.bytes_total, 1),
            completed=event.bytes_done,
            files=f"{event.files_done}/{event.files_total}",
            chunks=event.chunks_done,
            rate=rate,
            reading=reading,
        )

    def _beat(self) -> None:
        """Every ``heartbeat_s`` seconds, the last progress event as one line (even while one file takes long)."""
        while not self._stop.wait(self.heartbeat_s):
            elapsed = time.monotonic() - self._started
            event = self._last
            if event is None:
                click.echo(f"ingest: looking at the files, {elapsed:.0f} s", err=True)
                continue
            line = f"ingest: {event.files_done}/{event.files_total} files, {event.chunks_done} chunks, {elapsed:.0f} s"
            if 0 < event.bytes_done < event.bytes_total:
                line += f", about {elapsed * (event.bytes_total - event.bytes_done) / event.bytes_done:.0f} s left"
            if event.reading and event.pages > 1:
                line += f"; reading {Path(event.reading).name} page {event.page}/{event.pages}"
            click.echo(line, err=True)

    def print(self, message: str) -> None:
        if self._progress:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._progress:
            self._progress.stop()


def _summary(report: IngestReport, collection: str) -> str:
    line = (
        f"{report.files_seen} files seen: {report.files_added} added, {report.files_updated} updated, "
        f"{report.files_unchanged} unchanged, {report.files_removed} removed, {len(report.files_failed)} failed. "
        f"Chunks: +{report.chunks_added} -{report.chunks_removed}"
    )
    if report.chunks_reused:
        line += f" ({report.chunks_reused} reused without re-embedding)"
    return f"{line}; {report.chunks_total} in collection '{collection}'. {report.seconds:.1f} s."


@click.command("ingest", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--collection", help="Collection to write (RAG_COLLECTION; default 'docs').")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Store location (RAG_DATA_DIR; default ./data).")
@click.option("--embedding-model", help="sentence-transformers model: hub id or folder (RAG_EMBEDDING_MODEL).")
@click.option("--chunk-size", type=int, help="Most embedder tokens per chunk (RAG_CHUNK_SIZE; default 512).")
@click.option("--chunk-overlap", type=int, help="Tokens shared by neighbouring chunks (RAG_CHUNK_OVERLAP; default 64).")
@click.option("--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8000 (RAG_CHROMA_URL).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option("--no-ocr", is_flag=True, help="Do not read images and scanned PDF pages with OCR (RAG_OCR=false).")
@click.option(
    "--follow-links", is_flag=True, help="Follow symbolic links inside the folders (RAG_FOLLOW_LINKS; off: skipped)."
)
@click.option("--reset", is_flag=True, help="Delete the collection first and rebuild it from these paths.")
@click.option(
    "--watch",
    is_flag=True,
    help="Keep running: ingest again whatever changes under PATHS, until Ctrl-C (RAG_WATCH_DEBOUNCE_S, "
    "RAG_WATCH_RESCAN_S).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the report on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary; problems are still printed.")
def ingest_command(
    paths: tuple[Path, ...],
    collection: str | None,
    data_dir: Path | None,
    embedding_model: str | None,
    chunk_size: int | None,
    chunk_overlap: int | None,
    chroma_url: str | None,
    config_file: Path | None,
    no_ocr: bool,
    follow_links: bool,
    reset: bool,
    watch: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Parse, chunk, embed and store every document under PATHS; only what changed is redone.

    \b
    Examples:
      ingest ./docs                       # txt, md, html, pdf, docx, pptx, xlsx, epub, ...
      ingest ./docs ./notes.pdf --collection work
      ingest ./docs --embedding-model BAAI/bge-small-zh-v1.5 --reset
      ingest ./docs --json | jq .files_failed
      ingest ./docs --watch               # and keep ./docs in sync until Ctrl-C

    Files that disappeared from an ingested folder are removed from the store. Exit status: 0 all files
    ingested (with --watch: stopped by Ctrl-C or SIGTERM), 1 some file failed (each is named with the reason),
    2 usage error.
    """
    quiet_third_party()
    settings = settings_from_flags(
        config_file=config_file,
        collection=collection,
        data_dir=data_dir,
        embedding_model=embedding_model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        chroma_url=chroma_url,
        ocr=False if no_ocr else None,
        follow_links=True if follow_links else None,
    )

    if watch:
        _watch(settings, list(paths), reset=reset, as_json=as_json, quiet=quiet)
        return
    from rag.app.root import build_ingest_pipeline

    show_progress = not quiet and not as_json and sys.stderr.isatty()
    with _ProgressView(show_progress, heartbeat=not quiet) as view:

        def on_problem(problem: FileProblem, failed: bool) -> None:
            if failed:
                view.print(f"error: {problem.path}: {problem.error}")
            elif not quiet:
                view.print(f"skipped: {problem.path}: {problem.error}")

        def on_notice(message: str) -> None:
            if not quiet:
                view.print(f"note: {message}")

        try:
            pipeline = build_ingest_pipeline(
                settings, on_progress=view.update, on_problem=on_problem, on_notice=on_notice
            )
            report = pipeline.run(list(paths), reset=reset)
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
        except RagError as error:
            view.print(f"error: {error}")
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    elif not quiet:
        click.echo(_summary(report, settings.collection), err=True)
    sys.exit(1 if report.files_failed else 0)


def _watch(settings: Settings, paths: list[Path], *, reset: bool, as_json: bool, quiet: bool) -> None:
    """``ingest --watch``: one full sync, then a run per burst of changes, until Ctrl-C or SIGTERM. With
    ``--json``, one JSON object a line: ``sync`` (each run's report) and ``progress`` (chunks written)."""
    import logging
    import signal

    from rag.app.root import Components

    components = Components(settings)
    show_progress = not quiet and not as_json and sys.stderr.isatty()
    first = True
    # every run and bad file is printed below; the watcher's log lines would say it twice
    logging.getLogger("rag.watch").addHandler(logging.NullHandler())

    def emit(payload: dict[str, Any]) -> None:
        click.echo(json.dumps(payload, ensure_ascii=False))
        sys.stdout.flush()

    def ingest(run_paths: Sequence[str], gone: Sequence[str]) -> IngestReport:
        nonlocal first
        with _ProgressView(show_progress, heartbeat=not quiet and not as_json) as view:
            chunks_written = 0

            def on_progress(event: IngestProgress) -> None:
                nonlocal chunks_written
                view.update(event)
                if as_json and event.chunks_done != chunks_written:
                    chunks_written = event.chunks_done
                    emit({"event": "progress", "files_done": event.files_done, "files_total": event.files_total,
                          "chunks_done": event.chunks_done})  # fmt: skip

            def on_problem(problem: FileProblem, failed: bool) -> None:
                if failed:
                    view.print(f"error: {problem.path}: {problem.error}")
                elif not quiet:
                    view.print(f"skipped: {problem.path}: {problem.error}")

            def on_notice(message: str) -> None:
                if not quiet:
                    view.print(f"note: {message}")

            pipeline = components.ingest_pipeline(on_progress=on_progress, on_problem=on_problem, on_notice=on_notice)
            reset_now, first = reset and first, False
            return pipeline.run(list(run_paths), reset=reset_now, gone=gone)

    def on_start(run: SyncRun) -> None:
        if as_json:
            emit({"event": "start", "reason": run.reason, "paths": list(run.paths), "gone": list(run.gone)})

    def on_run(run: SyncRun) -> None:
        if as_json:
            emit({"event": "sync", "reason": run.reason, "paths": list(run.paths), "gone": list(run.gone),
                  "seconds": round(run.seconds, 3), "error": run.error,
                  "report": run.report.to_dict() if run.report is not None else None})  # fmt: skip
        elif run.error is not None:
            click.echo(f"error: {run.summary()}", err=True)
        elif not quiet:
            click.echo(f"sync: {run.summary()}", err=True)

    try:
        watcher = components.folder_watcher([str(p) for p in paths], ingest, on_start=on_start, on_run=on_run)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    # SIGTERM ends the watch as Ctrl-C does, after the run in progress (each file it writes is complete or not begun)
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop(timeout=0))
    if not quiet and not as_json:
        rescan = f"a full rescan every {settings.watch_rescan_s:g} s" if settings.watch_rescan_s else "no rescan"
        click.echo(
            f"watching {', '.join(map(str, paths))} for collection '{settings.collection}' ({rescan}); Ctrl-C stops",
            err=True,
        )
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    except RagError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if not quiet and not as_json:
        click.echo(f"stopped watching after {watcher.runs} run(s)", err=True)


def main() -> None:
    ingest_command(prog_name="ingest")

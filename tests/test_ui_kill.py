"""The torture suite: ``kill -9`` of the real UI process in the middle of an upload's ingest.

The UI runs in its own process (``ui.app`` as ``rag ui`` builds it, no language model), driven over HTTP with
``gradio_client``: one upload completes, a zip of 12 files is uploaded next and the process is killed once part of
it is written. A fresh process then answers from the first upload, the local index agrees with the store, and
re-ingesting the uploads folder (the UI's "re-ingest") makes the store of one clean run.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.retrieval.lexical import LexicalIndex
from tests.conftest import BUNDLED_EMBEDDER, free_port
from tests.test_faults import components, forget_chroma_clients, lexical_rows, top_file
from tests.test_ingest import _comparable, snapshot

REPO = Path(__file__).resolve().parents[1]
# The UI as `rag ui --no-llm` builds it, except that an ingest writes every 4 chunks instead of every 1,024: a
# kill lands between two writes of a small upload (a real upload of thousands of chunks has many writes).
UI = f"""
import os, sys
from pathlib import Path
data, port = Path(sys.argv[1]), int(sys.argv[2])
os.environ["GRADIO_TEMP_DIR"] = str(data / "uploads" / ".incoming")
from rag.settings import Settings
from ui.app import build_ui, create_handlers, launch
settings = Settings(data_dir=data, embedding_model={BUNDLED_EMBEDDER!r}, ui_port=port)
handlers = create_handlers(settings, use_llm=False)
components = handlers.library.components
real = components.ingest_pipeline
def small_writes(*args, **kwargs):
    pipeline = real(*args, **kwargs)
    pipeline.flush_chunks = 4
    return pipeline
components.ingest_pipeline = small_writes
launch(build_ui(handlers), settings, quiet=True)
"""


def start_ui(data: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", UI, str(data), str(port)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"the UI exited with {process.returncode}: {process.communicate()[1][-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the UI did not start within 120 s")
        time.sleep(0.3)


def rows_written(data: Path) -> int:
    """Chunks in the local index now (SQLite: safe to read while the UI process writes)."""
    try:
        with sqlite3.connect(data / "lexical" / "docs.sqlite3", timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM rows").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_during_an_upload_loses_nothing_and_reingest_completes(tmp_path: Path, embedder: Any) -> None:
    from gradio_client import Client, handle_file

    data = tmp_path / "data"
    first = tmp_path / "first"
    first.mkdir()
    for topic in ("quokka", "narwhal"):
        (first / f"{topic}.txt").write_text(f"The {topic} enclosure opens at nine o'clock.\n", encoding="utf-8")
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for n in range(12):
            sentences = " ".join(f"Note {n} line {j}: the shelf {n} holds box {j} of the archive." for j in range(40))
            bundle.writestr(f"note-{n:02d}.txt", sentences + "\n")

    port = free_port()
    process = start_ui(data, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        report = client.predict(
            [handle_file(str(path)) for path in sorted(first.iterdir())], api_name="/ingest_uploads"
        )
        assert "2 added" in report, report
        before = rows_written(data)
        client.submit([handle_file(str(archive))], api_name="/ingest_uploads")
        deadline = time.monotonic() + 180
        while rows_written(data) < before + 8:  # two of the upload's writes have landed: it is mid-way
            assert process.poll() is None and time.monotonic() < deadline, "the upload did not start writing"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        at_kill = rows_written(data)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    # a fresh process: the first upload is answered; the local index agrees with the store again
    forget_chroma_clients()
    fresh = components(data, embedder)
    assert top_file(fresh, "When does the quokka enclosure open?") == "quokka.txt"
    assert top_file(fresh, "When does the narwhal enclosure open?") == "narwhal.txt"
    index = LexicalIndex(data / "lexical" / "docs.sqlite3")
    assert index.ids() == fresh.store().all_ids()
    assert index._committed_stamp() == index._recorded_stamp()  # tantivy agrees with the table (or was rebuilt)
    assert index.search_hits("narwhal enclosure", 1)[0].chunk_id in fresh.store().all_ids()

    # re-ingesting the uploads folder (the UI's re-ingest) completes the store to what one clean run makes
    from rag.app.library import DocumentLibrary

    library = DocumentLibrary(fresh)
    uploads = library.uploads_dir()
    assert uploads in library.reingest_folders()
    report = library.reingest(None, uploads)
    assert not report.files_failed and report.files_added >= 1, report
    clean = tmp_path / "clean"
    components(clean, embedder).ingest_pipeline().run([uploads])
    assert _comparable(snapshot(data)) == _comparable(snapshot(clean))
    assert lexical_rows(data) == lexical_rows(clean)
    total = len(lexical_rows(clean))
    assert before < at_kill < total, (before, at_kill, total)  # the kill really happened mid-way
    print(f"\nkilled with {at_kill - before} of {total - before} chunks of the upload written")

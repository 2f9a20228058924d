"""Folders kept in sync (`ingest --watch`, the UI's and the server's watcher): real file events (inotify through
watchfiles) on a real store (embedded Chroma, the bundled embedder, the local BM25 index)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.discover import is_ignored_name
from ingest.watch import FolderWatcher, SyncRun
from rag.app.library import DocumentLibrary
from rag.app.root import Components
from rag.errors import ConfigError
from rag.retrieval.store import connect_chroma
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER

#: Each change must reach the store within this many seconds (debounce 0.4 s, settle 0.4 s, the run itself).
REACH_S = 10.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(folder: Path) -> dict[str, str]:
    """What one clean run of ``folder`` stores: every .txt/.md file below it (not hidden, not temporary) by hash."""
    found = {}
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if path.is_file() and path.suffix in {".txt", ".md"} and not any(is_ignored_name(p) for p in parts):
            found[str(path)] = _sha256(path)
    return found


class Synced:
    """A watcher over ``folder`` through the real library (the path `rag ui --watch` and `rag serve --watch`
    take), running in its thread; its runs are recorded."""

    def __init__(self, tmp_path: Path, embedder: Any, folder: Path, **settings: Any) -> None:
        self.folder = folder
        fields: dict[str, Any] = {"chunk_size": 64, "chunk_overlap": 8, "ocr": False, "watch_debounce_s": 0.4,
                                  "watch_rescan_s": 0} | settings  # fmt: skip
        self.settings = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER, **fields)
        self.components = Components(self.settings, use_llm=False)
        self.components.share_embedder(embedder)
        self.library = DocumentLibrary(self.components)
        self.runs: list[SyncRun] = []
        self.watcher = self.library.watch(None, [folder], on_run=self.runs.append)

    def __enter__(self) -> Synced:
        self.watcher.start()
        assert self.watcher.ready.wait(120), "the first full sync did not end"
        return self

    def __exit__(self, *exc: object) -> None:
        self.watcher.stop()
        assert not self.watcher.running

    def stored(self) -> dict[str, str]:
        """The store's complete files by hash (incomplete versions would show as a wrong hash)."""
        versions = self.components.store().file_versions()
        return {source: next(v.file_hash for v in found if v.complete) for source, found in versions.items()}

    def reaches(self, expected: Callable[[], dict[str, str]] | None = None, within: float = REACH_S) -> float:
        """Seconds until the store equals ``expected()`` (default: the folder as it is now); fails after
        ``within``."""
        expected = expected or (lambda: folder_state(self.folder))
        started = time.monotonic()
        while True:
            if self.stored() == expected():
                return time.monotonic() - started
            if time.monotonic() - started > within:
                pytest.fail(f"the store did not follow the folder within {within} s: runs {self.runs}")
            time.sleep(0.1)

    def wait_for(self, found: Callable[[], Any], within: float = 5.0) -> Any:
        """``found()`` once it is truthy (a run is recorded just after its writes are visible in the store)."""
        deadline = time.monotonic() + within
        while not (result := found()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return result


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "start.txt").write_text("The first document is here before watching begins.", encoding="utf-8")
    return folder


def test_every_kind_of_change_reaches_the_store(tmp_path: Path, embedder: Any, docs: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with Synced(tmp_path, embedder, docs) as synced:
        assert synced.stored() == folder_state(docs) and synced.runs[0].reason == "start"
        took = {}

        (docs / "new.txt").write_text("A new file about river barges.", encoding="utf-8")
        took["create"] = synced.reaches()
        (docs / "new.txt").write_text("The same file, now about mountain goats.", encoding="utf-8")
        took["modify"] = synced.reaches()
        (docs / "new.txt").rename(docs / "renamed.txt")
        took["rename"] = synced.reaches()
        renames = synced.wait_for(lambda: [run for run in synced.runs if str(docs / "new.txt") in run.gone])
        assert renames[0].paths == (str(docs / "renamed.txt"),)  # one run: the new name in, the old one out
        assert renames[0].report is not None and renames[0].report.chunks_reused > 0  # vectors not re-embedded
        (docs / "sub").mkdir()
        (docs / "renamed.txt").rename(docs / "sub" / "renamed.txt")
        took["move into a sub-folder"] = synced.reaches()
        shutil.move(docs / "sub", outside / "sub")
        took["sub-folder moved out"] = synced.reaches()
        assert not any("renamed.txt" in source for source in synced.stored())
        (outside / "sub" / "second.md").write_text("# Notes\n\nA second file that came along.", encoding="utf-8")
        shutil.move(outside / "sub", docs / "back")
        took["sub-folder moved in"] = synced.reaches()
        assert {Path(s).name for s in synced.stored()} == {"start.txt", "renamed.txt", "second.md"}
        (docs / "start.txt").unlink()
        took["delete"] = synced.reaches()
        assert all(seconds < REACH_S for seconds in took.values()), took
        print("seconds from the change to the store:", {kind: round(seconds, 2) for kind, seconds in took.items()})

        # one bad file is named with its reason; the watcher goes on with the next change
        (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
        (docs / "fine.txt").write_text("A good file beside a broken one.", encoding="utf-8")
        synced.reaches()
        failed = synced.wait_for(lambda: [p for run in synced.runs if run.report for p in run.report.files_failed])
        assert [Path(p.path).name for p in failed] == ["broken.pdf"] and "PDF" in failed[0].error
        (docs / "after.txt").write_text("Still watching after the failure.", encoding="utf-8")
        synced.reaches()


def test_editor_temporary_files_start_no_run(tmp_path: Path, embedder: Any, docs: Path) -> None:
    with Synced(tmp_path, embedder, docs) as synced:
        runs_before = len(synced.runs)
        for name in (".notes.txt.swp", "notes.txt~", ".#notes.txt", "4913", "draft.tmp", "~$report.docx",
                     "paper.pdf.crdownload", "video.part", ".hidden.txt"):  # fmt: skip
            (docs / name).write_bytes(b"scratch")
        (docs / ".git").mkdir()
        (docs / ".git" / "note.txt").write_text("inside a hidden folder", encoding="utf-8")
        time.sleep(3 * synced.settings.watch_debounce_s + 1.5)
        assert len(synced.runs) == runs_before
        from ingest.discover import discover

        assert [Path(f.absolute).name for f in discover([docs]).files] == ["start.txt"]  # a full run skips them too
        # an editor's save: write a temporary file, rename it over the document: one run, the document only
        (docs / "start.txt.tmp").write_text("Saved by an editor through a temporary file.", encoding="utf-8")
        os.replace(docs / "start.txt.tmp", docs / "start.txt")
        synced.reaches()
        synced.wait_for(lambda: len(synced.runs) > runs_before)
        time.sleep(1.0)  # and no second run comes
        assert len(synced.runs) == runs_before + 1 and synced.runs[-1].paths == (str(docs / "start.txt"),)


@pytest.mark.parametrize("max_wait_s", [60.0, 0.5], ids=["burst-ends-after-the-writer", "size-and-mtime-hold-it"])
def test_a_file_written_slowly_is_taken_once_complete(
    tmp_path: Path, embedder: Any, docs: Path, max_wait_s: float
) -> None:
    """Written in pieces closer together than the debounce: the burst ends only after the last piece. With the
    burst cut short (``max_wait_s``, as for a folder that never falls quiet), the file's changing size and mtime
    hold it back."""
    synced = Synced(tmp_path, embedder, docs)
    synced.watcher.max_wait_s = max_wait_s
    with synced:
        runs_before = len(synced.runs)
        slow = docs / "slow.txt"
        with slow.open("w", encoding="utf-8") as handle:  # pieces closer together than the debounce
            for piece in range(10):
                handle.write(f"Piece {piece} of a file that arrives slowly over the network. ")
                handle.flush()
                time.sleep(0.25)
        synced.reaches()
        synced.wait_for(lambda: len(synced.runs) > runs_before)
        time.sleep(1.0)
        assert synced.stored()[str(slow)] == _sha256(slow)
        runs = synced.runs[runs_before:]
        assert [run.paths for run in runs] == [(str(slow),)]  # never read half-written


def test_a_burst_of_200_files_is_one_run(tmp_path: Path, embedder: Any, docs: Path) -> None:
    with Synced(tmp_path, embedder, docs) as synced:
        runs_before = len(synced.runs)
        burst = docs / "burst"
        burst.mkdir()
        for n in range(200):
            (burst / f"note-{n:03d}.txt").write_text(f"Note number {n} of a big copy.", encoding="utf-8")
        synced.reaches(within=60)
        synced.wait_for(lambda: len(synced.runs) > runs_before)
        time.sleep(1.0)
        runs = synced.runs[runs_before:]
        assert len(runs) == 1, [run.summary() for run in runs]
        assert runs[0].report is not None and runs[0].report.files_added == 200


def test_the_rescan_catches_what_no_event_reported(tmp_path: Path, embedder: Any, docs: Path) -> None:
    """A change made through a hard link in another folder raises no event in the watched one (as on a network
    folder changed by another machine): the periodic rescan finds it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(docs / "start.txt", elsewhere / "link.txt")
    with Synced(tmp_path, embedder, docs, watch_rescan_s=2.0) as synced:
        with (elsewhere / "link.txt").open("w", encoding="utf-8") as handle:
            handle.write("Changed behind the watcher's back.")
        synced.reaches(within=15)
        assert synced.wait_for(lambda: [run for run in synced.runs if run.reason == "rescan" and run.report
                                        and run.report.files_updated == 1])  # fmt: skip


def test_watcher_stops_between_runs_and_refuses_a_missing_folder(tmp_path: Path) -> None:
    calls: list[tuple[list[str], list[str]]] = []

    def ingest(paths: Any, gone: Any) -> Any:
        calls.append((list(paths), list(gone)))
        from ingest.pipeline import IngestReport

        return IngestReport()

    with pytest.raises(ConfigError, match="no-such-folder"):
        FolderWatcher([tmp_path / "no-such-folder"], ingest)
    stop = threading.Event()
    watcher = FolderWatcher([tmp_path], ingest, debounce_s=0.2)
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    assert watcher.ready.wait(10)
    assert calls == [([str(tmp_path)], [])]
    watcher.stop()  # its own stop ends a run() given another event
    thread.join(5)
    assert not thread.is_alive()


def test_ingest_watch_names_a_missing_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", str(tmp_path / "nowhere"), "--watch", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "nowhere: no such file or folder to watch" in result.stderr


# -- `ingest --watch`, killed with SIGKILL in the middle of a run ----------------------------------------------------
def _watch_process(folder: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rag", "ingest", str(folder), "--watch", "--json", "--data-dir", str(data),
         "--embedding-model", BUNDLED_EMBEDDER, "--chunk-size", "24", "--chunk-overlap", "4", "--no-ocr"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ),
    )  # fmt: skip


def _events(process: subprocess.Popen[str], deadline_s: float = 240) -> Iterator[dict[str, Any]]:
    assert process.stdout is not None
    deadline = time.monotonic() + deadline_s
    for line in process.stdout:
        yield json.loads(line)
        if time.monotonic() > deadline:
            pytest.fail("ingest --watch took too long")
    pytest.fail(f"ingest --watch ended early with {process.wait()}")


def _snapshot(data: Path) -> dict[str, tuple[str, str, str]]:
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()  # another process wrote it since this one last looked
    got = connect_chroma(path=data / "chroma").get_collection("docs").get(include=["documents", "metadatas"])
    return {
        i: (d, str(m["file_hash"]), str(m["source"]))
        for i, d, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
    }


def test_kill_9_of_ingest_watch_mid_run_is_repaired_by_the_restart(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "seed.txt").write_text("Loaded before the burst, so the model is warm when it comes.", encoding="utf-8")
    crashed = tmp_path / "crashed"
    process = _watch_process(folder, crashed)
    try:
        events = _events(process)
        assert next(e for e in events if e["event"] == "sync")["reason"] == "start"
        for i in range(32):  # about 320 small chunks: more than the first two batches (64, 128) the run writes
            sentences = " ".join(f"File {i} sentence {j} tells its own small story." for j in range(20))
            (folder / f"doc{i:02d}.txt").write_text(sentences, encoding="utf-8")
        for event in events:
            assert event["event"] != "sync", "the run ended before it could be killed: make the files bigger"
            if event["event"] == "progress" and event["chunks_done"] > 0:
                break
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        process.kill()
    interrupted = _snapshot(crashed)

    restarted = _watch_process(folder, crashed)
    try:
        first = next(e for e in _events(restarted) if e["event"] == "sync")
        assert first["reason"] == "start" and first["error"] is None
        restarted.send_signal(signal.SIGTERM)  # a clean stop: exit 0
        assert restarted.wait(timeout=30) == 0
    finally:
        restarted.kill()
    # one clean run of the folder, with the same settings (in this process: the model is loaded already)
    clean = Components(Settings(data_dir=tmp_path / "clean", embedding_model=BUNDLED_EMBEDDER, chunk_size=24,
                                chunk_overlap=4, ocr=False))  # fmt: skip
    clean.share_embedder(embedder)
    assert not clean.ingest_pipeline().run([str(folder)]).files_failed
    clean_store, recovered = _snapshot(tmp_path / "clean"), _snapshot(crashed)
    assert 0 < len(interrupted) < len(clean_store)  # the kill really came in the middle of the run
    assert recovered == clean_store  # same ids (file, hash, index), texts, file hashes and sources


def test_rag_serve_watch_keeps_the_served_collection_in_sync(tmp_path: Path, embedder: Any, docs: Path) -> None:
    """The server's watcher starts with the app and stops with it; what it writes, the API lists at once."""
    from fastapi.testclient import TestClient

    from rag.server.app import ServeOptions, create_app

    components = Components(Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER, ocr=False,
                                     watch_debounce_s=0.4), use_llm=False)  # fmt: skip
    components.share_embedder(embedder)
    app = create_app(components, ServeOptions.from_components(components, watch_folders=[str(docs)]))

    def listed() -> set[str]:
        return {document["file_name"] for document in http.get("/v1/documents").json()["data"]}

    def within(seconds: float, wanted: set[str]) -> bool:
        deadline = time.monotonic() + seconds
        while listed() != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
        return listed() == wanted

    with TestClient(app) as http:
        assert within(60, {"start.txt"})  # the first full sync
        (docs / "added.md").write_text("# Added\n\nWhile the server runs.", encoding="utf-8")
        assert within(REACH_S, {"start.txt", "added.md"})
        (docs / "start.txt").unlink()
        assert within(REACH_S, {"added.md"})
        watchers = [thread for thread in threading.enumerate() if thread.name == "folder-watch"]
        assert len(watchers) == 1
    watchers[0].join(5)
    assert not watchers[0].is_alive()  # stopped at shutdown

    with pytest.raises(ConfigError, match="no-such-folder"):
        create_app(
            components, ServeOptions.from_components(components, watch_folders=[str(tmp_path / "no-such-folder")])
        )

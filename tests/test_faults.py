"""The torture suite, faults: the local index failing to write, the disk filling up, damaged database files.

Each fault is injected into the real thing (Chroma, SQLite, tantivy, the ``ingest`` and ``rag ask`` commands) and
each test asserts what the user reads, that nothing already stored is lost, and that what the message says to do
brings the store back to what one clean run makes.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rag.app.assistant import AskOptions, Assistant
from rag.app.root import Components
from rag.errors import StoreError
from rag.retrieval.lexical import LexicalIndex
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.test_ingest import _comparable, snapshot

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["depot", "canteen", "archive", "bicycle", "greenhouse", "library", "harbour", "observatory"]


def write_docs(folder: Path, topics: list[str], version: str = "one") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for topic in topics:
        (folder / f"{topic}.txt").write_text(
            f"Version {version}: the {topic} opens at {len(topic)} o'clock. The {topic} keys are at the desk.\n",
            encoding="utf-8",
        )


def components(data: Path, embedder: Any) -> Components:
    """The composition root over ``data`` with the session's loaded embedder and no language model."""
    built = Components(Settings(data_dir=data, embedding_model=BUNDLED_EMBEDDER), use_llm=False)
    built.share_embedder(embedder)
    return built


def ingest(data: Path, embedder: Any, folder: Path, *, flush_chunks: int = 1024) -> Any:
    pipeline = components(data, embedder).ingest_pipeline()
    pipeline.flush_chunks = flush_chunks  # several writes per run: a fault can land between two of them
    return pipeline.run([folder])


def lexical_rows(data: Path) -> list[tuple[Any, ...]]:
    """What the local index holds: each chunk's id, text, BM25 body and token count."""
    with sqlite3.connect(data / "lexical" / "docs.sqlite3") as connection:
        return sorted(connection.execute("SELECT chunk_id, text, body, mixtral_tokens FROM rows"))


def top_file(built: Components, question: str) -> str:
    """The file of the best passage a retrieval-only question finds (what a fresh asker gets)."""
    events = list(Assistant(built).ask(question, options=AskOptions(retrieval_only=True, k=3)))
    best = max(events[-1].sources, key=lambda source: float(source.get("score") or 0.0))
    return str(best["file_name"])


def forget_chroma_clients() -> None:
    """Another process changed (or a test damaged) a store this process has open: read it afresh."""
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


# -- 1. the local index failing to write -----------------------------------------------------------------------
def test_the_local_index_failing_mid_ingest_loses_nothing_and_the_rerun_completes(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, data = tmp_path / "docs", tmp_path / "data"
    write_docs(folder, TOPICS[:4])
    ingest(data, embedder, folder)
    write_docs(folder, TOPICS[:4], version="two")  # every file changes ...
    write_docs(folder, TOPICS[4:6])  # ... and two are new
    real = LexicalIndex._write_rows
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> None:  # the second write of the local index fails (a read-only disk)
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real(*args, **kwargs)

    monkeypatch.setattr(LexicalIndex, "_write_rows", staticmethod(failing))
    with pytest.raises(StoreError) as raised:
        ingest(data, embedder, folder, flush_chunks=1)  # one file per write
    message = str(raised.value)
    assert "readonly database" in message and "Nothing already stored is lost" in message, message
    assert "run the same ingest again" in message
    monkeypatch.setattr(LexicalIndex, "_write_rows", staticmethod(real))

    # the Chroma write of the failed file went through, the local index's did not: every changed file still has
    # a complete version in both, the old one where the new one did not land
    rows = {text for _, text, _, _ in lexical_rows(data)}
    versions = {topic: [text for text in rows if f"the {topic} opens" in text] for topic in TOPICS[:4]}
    assert all(len(found) >= 1 for found in versions.values()), versions
    assert sum(found[0].startswith("Version one") for found in versions.values()) >= 3  # written: only the first
    failed = next(topic for topic, found in versions.items() if all("Version one" in text for text in found))
    fresh = components(data, embedder)
    local = LexicalIndex(data / "lexical" / "docs.sqlite3")
    assert local.ids() <= fresh.store().all_ids()  # before any repair: no chunk the store lacks
    assert local._committed_stamp() == local._recorded_stamp()  # tantivy rolled back with SQLite: they agree
    assert top_file(fresh, f"When does the {failed} open?") == f"{failed}.txt"  # answered from its previous version

    report = ingest(data, embedder, folder)  # the rerun completes the store ...
    assert not report.files_failed
    ingest(tmp_path / "clean", embedder, folder)  # ... to what one clean run makes
    assert _comparable(snapshot(data)) == _comparable(snapshot(tmp_path / "clean"))
    assert lexical_rows(data) == lexical_rows(tmp_path / "clean")
    assert top_file(components(data, embedder), f"When does the {failed} open?") == f"{failed}.txt"


# -- 2. the disk filling up --------------------------------------------------------------------------------------
def _limited(limit: int) -> None:
    """In the child: writes past ``limit`` bytes per file fail with EFBIG instead of the signal killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_full_disk_is_named_and_the_rerun_completes(tmp_path: Path, embedder: Any) -> None:
    folder, data = tmp_path / "docs", tmp_path / "data"
    write_docs(folder, TOPICS[:2])
    ingest(data, embedder, folder)
    largest = max(path.stat().st_size for path in data.rglob("*") if path.is_file())
    for n in range(12):  # enough new text that the store must grow past the limit
        (folder / f"more-{n:02d}.txt").write_text(f"Extra note {n}: " + "filler words " * 60 + "\n", encoding="utf-8")
    forget_chroma_clients()
    limit = largest + 8 * 1024
    full = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", str(folder), "--data-dir", str(data), "--json"],
        preexec_fn=lambda: _limited(limit),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        cwd=tmp_path,
    )
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, full.stderr
    assert "the disk is full" in errors[0] and str(data) in errors[0], errors[0]
    assert "ulimit -f" in errors[0]  # why: this process's file size limit
    assert "Nothing already stored is lost" in errors[0] and "run the same ingest again" in errors[0]

    forget_chroma_clients()
    kept = components(data, embedder)
    assert top_file(kept, "When does the canteen open?") == "canteen.txt"  # what was there is still answerable
    report = ingest(data, embedder, folder)  # room again: the same ingest completes the store ...
    assert not report.files_failed and report.files_added >= 1
    ingest(tmp_path / "clean", embedder, folder)  # ... to what one clean run makes
    assert _comparable(snapshot(data)) == _comparable(snapshot(tmp_path / "clean"))
    assert lexical_rows(data) == lexical_rows(tmp_path / "clean")


# -- 3. damaged database files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with one clean ingest of a small folder (copied by each test before it is damaged)."""
    root = tmp_path_factory.mktemp("damaged")
    write_docs(root / "docs", TOPICS)
    ingest(root / "data", embedder, root / "docs")
    return root


@pytest.fixture
def damaged_copy(built: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the clean data dir under a new path (so no Chroma client of this process has it open)."""
    shutil.copytree(built / "data", tmp_path / "data")
    # the copy's write-ahead log into its table: damage to the file is then not masked by newer pages in the log
    with sqlite3.connect(tmp_path / "data" / "lexical" / "docs.sqlite3") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield tmp_path
    forget_chroma_clients()


@pytest.fixture
def fast_cli(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands below run in this process with the session's loaded embedder (loading it is not the subject)."""
    import rag.retrieval.embedders.factory as factory

    monkeypatch.setattr(factory, "make_embedder", lambda *args, **kwargs: embedder)


def rag(*args: str) -> Result:
    from rag.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
        return
    # "middle": the whole page that holds a document's text (the same bytes every run: the same damage)
    start = 0 if how == "header" else path.read_bytes().index(b"opens at") // 4096 * 4096
    with path.open("r+b") as file:
        file.seek(start)
        file.write(bytes(range(256)) * (1 if how == "header" else 16))


@pytest.mark.parametrize("how", ["header", "truncated", "middle"])
def test_a_damaged_store_names_its_path_and_how_to_rebuild_it(
    damaged_copy: Path, built: Path, fast_cli: None, how: str
) -> None:
    data, folder = damaged_copy / "data", built / "docs"  # the documents it was built from
    chroma = data / "chroma"
    damage(chroma / "chroma.sqlite3", how)
    results = [rag("ingest", str(folder), "--data-dir", str(data))]
    if how != "middle":  # a damaged page in the middle is met by a full read (ingest), not by every question
        results.append(rag("ask", "When does the depot open?", "--no-llm", "--data-dir", str(data)))
    for result in results:
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.stderr
        assert f"the store at {chroma} is damaged" in result.stderr, result.stderr
        assert f"mv {chroma} {chroma}.damaged" in result.stderr and "`ingest PATH` again" in result.stderr
    # what the message says to do rebuilds the store of one clean run
    chroma.rename(f"{chroma}.damaged")
    forget_chroma_clients()  # each command is a new process; here they share one
    rebuilt = rag("ingest", str(folder), "--data-dir", str(data))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert _comparable(snapshot(data)) == _comparable(snapshot(built / "data"))
    assert lexical_rows(data) == lexical_rows(built / "data")


@pytest.mark.parametrize("how", ["header", "truncated", "middle"])
def test_a_damaged_local_index_is_set_aside_and_rebuilt_from_the_store(
    damaged_copy: Path, built: Path, fast_cli: None, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    data, folder = damaged_copy / "data", built / "docs"
    table = data / "lexical" / "docs.sqlite3"
    damage(table, how)
    question = ["ask", "When does the observatory open?", "--no-llm", "--json", "--data-dir", str(data)]
    first = rag(*question)
    assert first.exit_code == 0, first.stderr  # answered: the damaged table was set aside and refilled at once
    # said on stderr (the warning of logger rag.lexical; pytest captures it)
    assert f"the local index {table} is damaged" in caplog.text and "refilled from the store" in caplog.text
    assert "Traceback" not in first.stderr
    assert table.with_name("docs.sqlite3.damaged").is_file()  # kept for a post-mortem, out of the way
    assert '"file_name": "observatory.txt"' in first.stdout
    again = rag("ingest", str(folder), "--data-dir", str(data), "--json")
    assert again.exit_code == 0 and '"files_unchanged": 8' in again.stdout, again.output
    assert lexical_rows(data) == lexical_rows(built / "data")


def test_a_damaged_bm25_folder_is_rebuilt_from_the_table(damaged_copy: Path, built: Path, fast_cli: None) -> None:
    data = damaged_copy / "data"
    folder = data / "lexical" / "docs.tantivy"
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_size:
            damage(path, "header")
    result = rag("ask", "When does the harbour open?", "--no-llm", "--json", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert '"file_name": "harbour.txt"' in result.stdout
    assert "Traceback" not in result.stderr
    assert not [path for path in folder.iterdir() if path.is_file() and path.read_bytes()[:256] == bytes(range(256))]
    index = LexicalIndex(data / "lexical" / "docs.sqlite3")
    assert [hit.chunk_id for hit in index.search_hits("harbour keys", 3)] == [
        hit.chunk_id for hit in LexicalIndex(built / "data" / "lexical" / "docs.sqlite3").search_hits("harbour keys", 3)
    ]


def test_what_counts_as_a_full_disk() -> None:
    import errno

    from rag.errors import disk_full_reason

    assert disk_full_reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the disk"
    assert disk_full_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "the disk quota is used up"
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as cause:
            raise RuntimeError("the write failed") from cause
    except RuntimeError as wrapped:
        assert disk_full_reason(wrapped) == "a file reached the largest size allowed"  # found through the cause
    assert disk_full_reason(sqlite3.OperationalError("database or disk is full")) == "no space left on the disk"
    assert disk_full_reason(ValueError("IoError: No space left on device (os error 28)")) == "no space left on the disk"
    assert disk_full_reason(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_reason(RuntimeError("disk I/O error"), "/") is None  # no size limit here, a roomy disk


def test_the_local_index_on_a_full_disk_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.errors import DiskFullError

    index = LexicalIndex(tmp_path / "lexical" / "docs.sqlite3")
    meta = {"source": "a.txt", "source_abs": "/a.txt", "file_name": "a.txt", "chunk_index": 0, "chunk_count": 1}
    index.add(["one"], ["The depot opens at seven."], [meta])

    def full(*args: Any, **kwargs: Any) -> None:  # what SQLite says when write() meets ENOSPC
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(LexicalIndex, "_write_rows", staticmethod(full))
    with pytest.raises(DiskFullError) as raised:
        index.add(["two"], ["The canteen opens at noon."], [{**meta, "source_abs": "/b.txt"}])
    message = str(raised.value)
    assert message.startswith(f"the disk is full (no space left on the disk): writing the local index {index.path}")
    assert "run the same ingest again" in message
    monkeypatch.undo()
    assert index.ids() == {"one"}  # rolled back on both sides, and the index still takes writes
    index.add(["two"], ["The canteen opens at noon."], [{**meta, "source_abs": "/b.txt"}])
    assert [hit.chunk_id for hit in index.search_hits("canteen", 2)] == ["two"]

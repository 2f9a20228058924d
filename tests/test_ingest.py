"""Ingestion end to end: real unstructured, real Chroma, the real bundled embedder, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline import IngestPipeline, IngestReport
from rag import ModelMismatchError
from rag.retrieval.store import ChunkStore, connect_chroma
from tests.conftest import BUNDLED_EMBEDDER
from tests.documents import BAD_ROLES, GOOD_ROLES, write_corpus

REPO = Path(__file__).resolve().parents[1]


def pipeline_for(data_dir: Path, embedder: Any, **options: Any) -> IngestPipeline:
    store = ChunkStore(connect_chroma(path=data_dir / "chroma"), "docs")
    return IngestPipeline(store, embedder, **options)


def snapshot(data_dir: Path, collection: str = "docs") -> dict[str, tuple[str, dict[str, Any]]]:
    chroma = connect_chroma(path=data_dir / "chroma")
    got = chroma.get_collection(collection).get(include=["documents", "metadatas"])
    return {i: (d, dict(m)) for i, d, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)}


def test_every_format_is_ingested_and_bad_files_are_named(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    files = write_corpus(folder)
    report = pipeline_for(tmp_path / "data", embedder).run([folder])

    failed = {Path(p.path).name: p.error for p in report.files_failed}
    assert set(failed) == {files[role].name for role in BAD_ROLES}
    assert "corrupt or unreadable PDF" in failed["broken.pdf"]
    assert failed["empty.txt"] == "empty file"
    assert "binary content" in failed["image.txt"]
    assert report.files_seen == len(GOOD_ROLES) + len(BAD_ROLES)  # the hidden file is not seen
    assert report.files_added == len(GOOD_ROLES)

    stored = snapshot(tmp_path / "data")
    assert report.chunks_total == len(stored) == report.chunks_added
    by_file: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for document, metadata in stored.values():
        by_file.setdefault(metadata["file_name"], []).append((document, metadata))
    assert set(by_file) == {files[role].name for role in GOOD_ROLES}
    text_of = {name: "".join(d for d, _ in chunks) for name, chunks in by_file.items()}
    assert "带薪年假十五天" in text_of["规定-gbk.txt"]
    assert "春節期間加開列車" in text_of["big5.txt"]
    assert "荔枝 | 38 | 增城" in text_of["prices.html"]
    assert {m["page"] for _, m in by_file["rivers.pdf"]} == {1, 2}
    heading_of = {d: m["heading"] for d, m in by_file["manual.md"]}
    assert any("注意事项" in h and "潮湿" in d for d, h in heading_of.items())

    for document, metadata in stored.values():
        assert metadata["source_abs"] == os.path.abspath(metadata["source_abs"])
        assert metadata["source"].startswith(str(folder))
        assert metadata["end"] - metadata["start"] == len(document)
        assert metadata["chunk_count"] == len(by_file[metadata["file_name"]])
        assert metadata["tokens"] <= embedder.max_tokens


def test_incremental_runs(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    files = write_corpus(folder)
    for role in BAD_ROLES:
        files[role].unlink()
    data = tmp_path / "data"
    first = pipeline_for(data, embedder).run([folder])
    assert first.files_added == len(GOOD_ROLES) and not first.files_failed
    before = snapshot(data)

    unchanged = pipeline_for(data, embedder).run([folder])
    assert (unchanged.files_unchanged, unchanged.files_added, unchanged.chunks_added) == (
        len(GOOD_ROLES),
        0,
        0,
    )
    assert snapshot(data) == before

    # modified, deleted, renamed, added
    files["markdown"].write_text(files["markdown"].read_text("utf-8") + "\n## 保修\n\n整机保修两年。\n", "utf-8")
    files["html"].unlink()
    files["pdf"].rename(folder / "rivers-renamed.pdf")
    (folder / "new.txt").write_text("新增的文件内容。", encoding="utf-8")
    report = pipeline_for(data, embedder).run([folder])
    assert report.files_updated == 1
    assert report.files_removed == 2  # the deleted html and the pdf's old name
    assert report.files_added == 2  # new.txt and the pdf's new name
    assert report.files_unchanged == len(GOOD_ROLES) - 3
    assert report.chunks_reused >= 2  # the renamed pdf and the unchanged part of the manual are not re-embedded
    after = snapshot(data)
    names = {m["file_name"] for _, m in after.values()}
    assert "prices.html" not in names and "rivers.pdf" not in names
    assert {"rivers-renamed.pdf", "new.txt", "manual.md"} <= names
    assert any("整机保修两年" in d for d, _ in after.values())

    # the store equals a clean run over the folder as it is now
    clean = tmp_path / "clean"
    pipeline_for(clean, embedder).run([folder])
    assert _comparable(snapshot(clean)) == _comparable(after)


def test_fresh_and_reused_vectors_in_one_write(tmp_path: Path, embedder: Any) -> None:
    """A new file written before a renamed one: fresh vectors and vectors taken from the store share one upsert."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("长江全长约6300公里，是中国第一长河。", encoding="utf-8")
    data = tmp_path / "data"
    pipeline_for(data, embedder).run([folder])
    (folder / "b.txt").rename(folder / "c.txt")
    (folder / "a.txt").write_text("黄河全长约5464公里。", encoding="utf-8")
    report = pipeline_for(data, embedder).run([folder])
    assert not report.files_failed
    assert (report.files_added, report.files_removed, report.chunks_reused) == (2, 1, 1)
    assert sorted(m["file_name"] for _, m in snapshot(data).values()) == ["a.txt", "c.txt"]


def test_the_loader_prepares_the_next_batch_while_one_is_embedded(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first batch is embedded, the loader thread reads and chunks files until ``read_ahead_chunks``
    chunks wait, and stops there: the next encode need not wait for files, and memory stays bounded."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for number in range(150):
        (folder / f"{number:03}.txt").write_text(f"第{number}号通知：仓库{number}明天检修。", encoding="utf-8")
    pipeline = pipeline_for(tmp_path / "data", embedder, flush_chunks=64, read_ahead_chunks=50)
    prepared: list[int] = []  # chunks of each file the loader has prepared
    prepare = pipeline._prepare

    def counting_prepare(item: Any, size: int, overlap: int) -> str | None:
        error = prepare(item, size, overlap)
        prepared.append(len(item.chunks))
        return error

    monkeypatch.setattr(pipeline, "_prepare", counting_prepare)
    seen_ahead: list[int] = []
    gil_turns: list[float] = []
    turn_before = sys.getswitchinterval()
    embed_array = embedder.embed_array

    def embed_when_the_loader_rests(texts: list[str], *, query: bool = False) -> Any:
        if not seen_ahead:  # the first batch: hold the encoder until the loader has stopped working ahead
            deadline, last = time.monotonic() + 30, -1
            while len(prepared) != last and time.monotonic() < deadline:
                last = len(prepared)
                time.sleep(0.5)
            seen_ahead.append(sum(prepared) - len(texts))
            gil_turns.append(sys.getswitchinterval())
        return embed_array(texts, query=query)

    monkeypatch.setattr(embedder, "embed_array", embed_when_the_loader_rests)
    report = pipeline.run([folder])

    assert set(prepared) == {1}  # one chunk a file, so chunks ahead = files ahead
    assert seen_ahead == [50]  # no fewer, no more
    assert gil_turns == [0.0005] and sys.getswitchinterval() == turn_before  # short GIL turns for the run only
    assert report.files_added == 150 and report.chunks_added == 150


def test_the_loader_reads_a_whole_batch_ahead_only_where_the_encoder_leaves_cpus_idle(
    tmp_path: Path, embedder: Any
) -> None:
    import torch

    from ingest.pipeline import available_cpus
    from rag.retrieval.embedders.factory import make_embedder

    served = make_embedder("multilingual-e5-small-q4", base_url="http://127.0.0.1:9/v1", tokenizer=BUNDLED_EMBEDDER)
    assert served.cpu_threads == 0
    assert pipeline_for(tmp_path / "a", served, flush_chunks=512).default_read_ahead() == 512
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(available_cpus())  # the encoder fills every CPU: a small window
        assert embedder.cpu_threads == available_cpus()
        assert pipeline_for(tmp_path / "b", embedder, flush_chunks=512).default_read_ahead() == 64
        if available_cpus() > 1:  # a CPU the encoder leaves idle: a whole batch
            torch.set_num_threads(available_cpus() - 1)
            assert pipeline_for(tmp_path / "c", embedder, flush_chunks=512).default_read_ahead() == 512
    finally:
        torch.set_num_threads(threads)


def test_an_error_in_the_loader_ends_the_run_and_the_loader(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for number in range(20):
        (folder / f"{number:02}.txt").write_text(f"第{number}号通知。", encoding="utf-8")
    pipeline = pipeline_for(tmp_path / "data", embedder, flush_chunks=4)
    prepare = pipeline._prepare

    def failing_prepare(item: Any, size: int, overlap: int) -> str | None:
        if os.path.basename(item.file.path) == "07.txt":
            raise RuntimeError("a bug while reading 07.txt")
        return prepare(item, size, overlap)

    monkeypatch.setattr(pipeline, "_prepare", failing_prepare)
    with pytest.raises(RuntimeError, match=r"07\.txt"):
        pipeline.run([folder])
    assert not [thread for thread in threading.enumerate() if thread.name == "ingest-load"]
    stored = {m["file_name"] for _, m in snapshot(tmp_path / "data").values()}
    assert stored and stored < {f"{number:02}.txt" for number in range(7)}  # what was written before it stays


def _comparable(store: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    return {i: (d, tuple(sorted(m.items()))) for i, (d, m) in store.items()}


def test_removal_only_touches_ingested_folders(tmp_path: Path, embedder: Any) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a.txt").write_text("第一个目录。", encoding="utf-8")
    (two / "b.txt").write_text("第二个目录。", encoding="utf-8")
    data = tmp_path / "data"
    pipeline_for(data, embedder).run([one])
    pipeline_for(data, embedder).run([two])
    assert {m["file_name"] for _, m in snapshot(data).values()} == {"a.txt", "b.txt"}
    (two / "b.txt").unlink()
    report = pipeline_for(data, embedder).run([two])
    assert report.files_removed == 1
    assert {m["file_name"] for _, m in snapshot(data).values()} == {"a.txt"}


def test_symlink_loops_and_hidden_folders(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "a.txt").write_text("循环链接不应导致死循环。", encoding="utf-8")
    (folder / "inner" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / ".git").mkdir()
    (folder / ".git" / "config.txt").write_text("hidden", encoding="utf-8")
    report = pipeline_for(tmp_path / "data", embedder).run([folder])
    assert (report.files_seen, report.files_added) == (1, 1)
    followed = pipeline_for(tmp_path / "data2", embedder, follow_links=True).run([folder])
    assert (followed.files_seen, followed.files_added) == (1, 1)  # followed, the loop still ends


def test_links_do_not_lead_out_of_a_folder_unless_asked(tmp_path: Path, embedder: Any) -> None:
    outside = tmp_path / "outside"
    (outside / "private").mkdir(parents=True)
    (outside / "secret.txt").write_text("The vault code is 7391.\n", encoding="utf-8")
    (outside / "private" / "notes.txt").write_text("Private notes about the vault.\n", encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "public.txt").write_text("The cafeteria opens at noon.\n", encoding="utf-8")
    (docs / "passwd_link.txt").symlink_to(outside / "secret.txt")
    (docs / "linked").symlink_to(outside / "private", target_is_directory=True)

    report = pipeline_for(tmp_path / "data", embedder).run([docs])
    assert report.files_added == 1 and not report.files_failed
    skipped = {Path(problem.path).name: problem.error for problem in report.files_skipped}
    assert set(skipped) == {"passwd_link.txt", "linked"} and all("symbolic link" in e for e in skipped.values())
    assert not any("vault" in text for text, _ in snapshot(tmp_path / "data").values())

    named = pipeline_for(tmp_path / "data", embedder).run([docs / "passwd_link.txt"])  # named: the user's choice
    assert named.files_added == 1
    followed = pipeline_for(tmp_path / "data3", embedder, follow_links=True).run([docs])
    assert followed.files_added == 3  # --follow-links

    # the browser UI and the API never follow a link, whatever the command line's setting says
    from rag.app.library import DocumentLibrary
    from rag.app.root import Components
    from rag.settings import Settings

    components = Components(Settings(data_dir=tmp_path / "ui-data", embedding_model=BUNDLED_EMBEDDER,
                                     follow_links=True))  # fmt: skip
    components.share_embedder(embedder)
    ui_report = DocumentLibrary(components, folder_roots=[docs]).reingest(None, docs)
    assert ui_report.files_added == 1 and len(ui_report.files_skipped) == 2


def test_a_file_name_that_is_not_utf8_costs_nothing(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    bad = os.path.join(os.fsencode(docs), b"bad\xffname.txt")
    with open(bad, "wb") as handle:
        handle.write(b"Shipping labels are printed in room 12.\n")
    (docs / "good.txt").write_text("The printer is on the second floor.\n", encoding="utf-8")
    (docs / "odd name - with spaces.txt").write_text("Spaces are fine in names.\n", encoding="utf-8")
    report = pipeline_for(tmp_path / "data", embedder).run([docs])
    assert report.files_added == 3 and not report.files_failed, report
    names = {meta["file_name"] for _, meta in snapshot(tmp_path / "data").values()}
    assert "bad\\xffname.txt" in names  # kept, shown with its byte escaped
    again = pipeline_for(tmp_path / "data", embedder).run([docs])
    assert (again.files_unchanged, again.chunks_added, again.chunks_removed) == (3, 0, 0)  # a rerun changes nothing
    os.remove(bad)
    gone = pipeline_for(tmp_path / "data", embedder).run([docs])
    assert gone.files_removed == 1


def test_model_change_is_refused_and_reset_rebuilds(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("模型切换测试。", encoding="utf-8")
    data = tmp_path / "data"
    pipeline_for(data, embedder).run([folder])

    other = _renamed_embedder(embedder, "another/model")
    with pytest.raises(ModelMismatchError, match="--reset"):
        pipeline_for(data, other).run([folder])
    assert {m["signature"] for _, m in snapshot(data).values()} == {pipeline_for(data, embedder).signature}

    report = pipeline_for(data, other).run([folder], reset=True)
    assert report.files_added == 1
    meta = connect_chroma(path=data / "chroma").get_collection("docs").metadata
    assert meta["embedding_model"] == "another/model"


def _renamed_embedder(embedder: Any, name: str) -> Any:
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    return SentenceTransformerEmbeddings(name, client=embedder.client)


def test_chunk_settings_change_rechunks_everything(tmp_path: Path, embedder: Any) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "long.txt").write_text("这是一个用来测试分块设置的句子。" * 80, encoding="utf-8")
    data = tmp_path / "data"
    big = pipeline_for(data, embedder, chunk_size=200).run([folder])
    small = pipeline_for(data, embedder, chunk_size=50, chunk_overlap=0).run([folder])
    assert small.files_updated == 1
    stored = snapshot(data)
    assert len(stored) == small.chunks_total > big.chunks_total
    assert max(m["tokens"] for _, m in stored.values()) <= 50


# -- the command line, as a user runs it --------------------------------------------------------------------
def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", "ingest", *args],  # `rag ingest` is the `ingest` command
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def test_cli_json_report_and_exit_codes(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder)
    result = run_cli(
        str(folder),
        "--data-dir",
        str(tmp_path / "data"),
        "--embedding-model",
        BUNDLED_EMBEDDER,
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # bad files in the folder
    report = json.loads(result.stdout)
    assert set(report) >= {
        "files_seen",
        "files_added",
        "files_updated",
        "files_unchanged",
        "files_removed",
        "files_failed",
        "chunks_added",
        "chunks_removed",
        "chunks_total",
        "seconds",
    }
    assert report["files_added"] == len(GOOD_ROLES)
    assert {Path(f["path"]).name for f in report["files_failed"]} == {"broken.pdf", "empty.txt", "image.txt"}
    for line in (
        "broken.pdf: corrupt or unreadable PDF",
        "empty.txt: empty file",
        "image.txt: binary content",
    ):
        assert line in result.stderr

    # a clean folder: exit 0; the collection's model is remembered without repeating the flag
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.md").write_text("# 标题\n\n内容。\n", encoding="utf-8")
    ok = run_cli(str(good), "--data-dir", str(tmp_path / "data"), "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["files_added"] == 1

    usage = run_cli("--chunk-size", "many", str(good), cwd=tmp_path)
    assert usage.returncode == 2 and "chunk-size" in usage.stderr.lower()
    mismatch = run_cli(
        str(good), "--data-dir", str(tmp_path / "data"), "--embedding-model", "other/model", cwd=tmp_path
    )
    assert mismatch.returncode == 1 and "--reset" in mismatch.stderr


def test_kill_9_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    """A real ``kill -9`` in the middle of writing, twice, then the same command: the store of one clean run."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(24):
        sentences = "".join(f"第{i}号文件的第{j}句话，讲述不同的事情。" for j in range(30))
        (folder / f"doc{i:02d}.txt").write_text(sentences, encoding="utf-8")
    script = (
        "import sys\n"
        "from ingest.pipeline import IngestPipeline\n"
        "from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings\n"
        "from rag.retrieval.store import ChunkStore, connect_chroma\n"
        "def tick(event):\n"
        "    print(event.chunks_done, flush=True)\n"
        f"store = ChunkStore(connect_chroma(path=sys.argv[1]), 'docs')\n"
        f"embedder = SentenceTransformerEmbeddings({BUNDLED_EMBEDDER!r})\n"
        "pipeline = IngestPipeline(store, embedder, chunk_size=64, chunk_overlap=8, flush_chunks=16,\n"
        "                          on_progress=tick)\n"
        f"pipeline.run([{str(folder)!r}])\n"
        "print('done', flush=True)\n"
    )
    env = dict(os.environ)
    crashed = tmp_path / "crashed"

    for kill_after_chunks in (30, 100):
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(crashed / "chroma")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        for line in process.stdout:
            if line.strip() == "done":
                pytest.fail("ingest finished before it could be killed: make the corpus bigger")
            if int(line) >= kill_after_chunks or time.monotonic() > deadline:
                break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL

    interrupted = snapshot(crashed)
    # This process now holds a cached view of the store; another process is about to change it
    # (the embedded Chroma is not multi-process safe), so drop the cache before reading it again.
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    final = subprocess.run(
        [sys.executable, "-c", script, str(crashed / "chroma")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    clean = tmp_path / "clean"
    subprocess.run(
        [sys.executable, "-c", script, str(clean / "chroma")],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )

    clean_store, recovered = snapshot(clean), snapshot(crashed)
    assert 0 < len(interrupted) < len(clean_store)  # the kills really happened mid-way
    assert _comparable(recovered) == _comparable(clean_store)
    # and the vectors of the recovered store are those of the clean run
    a = connect_chroma(path=clean / "chroma").get_collection("docs").get(include=["embeddings"])
    b = connect_chroma(path=crashed / "chroma").get_collection("docs").get(ids=a["ids"], include=["embeddings"])
    assert sorted(a["ids"]) == sorted(b["ids"])
    import numpy as np

    order = {i: n for n, i in enumerate(b["ids"])}
    vectors_a, vectors_b = np.asarray(a["embeddings"]), np.asarray(b["embeddings"])
    assert np.allclose(vectors_a, vectors_b[[order[i] for i in a["ids"]]], atol=1e-5)


def test_report_to_dict_is_json_ready() -> None:
    report = IngestReport(files_seen=1, seconds=1.23456)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["seconds"] == 1.235 and data["files_failed"] == []


def test_sample_docs_ingest(tmp_path: Path, embedder: Any) -> None:
    """The sample folder shipped for the demo ingests without a single failure."""
    sample = REPO / "data" / "sample-docs"
    copy = tmp_path / "sample-docs"
    shutil.copytree(sample, copy)
    report = pipeline_for(tmp_path / "data", embedder).run([copy])
    assert not report.files_failed
    assert report.files_added == len([p for p in copy.rglob("*") if p.is_file()]) >= 4


def test_without_a_terminal_long_work_still_says_it_is_working(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from rag.cli.ingest import _ProgressView, ingest_command

    monkeypatch.setattr(_ProgressView, "heartbeat_s", 0.05)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text("这是一句没有结尾的很长的话" * 2000, encoding="utf-8")  # one 26,000-character line
    result = CliRunner().invoke(
        ingest_command,
        [str(docs), "--json", "--data-dir", str(tmp_path / "data"), "--embedding-model", BUNDLED_EMBEDDER],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files_added"] == 1  # stdout stays one JSON object
    beats = [line for line in result.stderr.splitlines() if line.startswith("ingest: ")]
    assert len(beats) >= 2 and any(" s" in line for line in beats)  # stderr kept saying it was working

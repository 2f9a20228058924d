"""The torture suite: a folder of bad files of every format the loader accepts, awkward names, and files that vanish
or turn unreadable between discovery and loading. Each bad file costs one named line with its reason; every good
file is ingested; the exit status says so; a rerun changes nothing."""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ingest.load import SUPPORTED_EXTENSIONS, LoadError, load_document
from rag.cli.ingest import ingest_command
from tests.conftest import BUNDLED_EMBEDDER

GOOD = {
    "good.txt": "The archive room is on the fourth floor.\n",
    "good with spaces.md": "# Notes\n\nThe fire drill is on Friday.\n",
    "-leading-dash.txt": "Names may start with a dash.\n",
    "new\nline.txt": "Names may hold a line break.\n",
    ("x" * 251) + ".txt": "A name of 255 bytes.\n",
    "mixed-encodings.txt": None,  # written below: UTF-8, then a GBK line, then UTF-8 again
}


def zip_bomb(path: Path, inner: str) -> None:
    """A small zip whose member unpacks to 1 GiB of zeros (twice the limit), dressed as an Office or EPUB file."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open(inner, "w", force_zip64=True) as member:
            block = b"\0" * (1 << 24)
            for _ in range(64):
                member.write(block)


def write_torture_folder(folder: Path) -> dict[str, str]:
    """The bad files by name, with a word their reason must contain."""
    folder.mkdir(parents=True)
    noise = random.Random(7)
    for name, text in GOOD.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    (folder / "mixed-encodings.txt").write_bytes(
        "First line in UTF-8: 会议室在三楼。\n".encode() + "第二行是 GBK 编码的。\n".encode("gbk")
        + b"Third line in UTF-8 again.\n"
    )  # fmt: skip
    bad: dict[str, str] = {}
    for extension in sorted(SUPPORTED_EXTENSIONS):
        (folder / f"empty{extension}").write_bytes(b"")
        bad[f"empty{extension}"] = "empty"
        if extension in {".txt", ".text", ".log", ".md", ".markdown", ".csv", ".tsv", ".json", ".xml", ".rst", ".org"}:
            continue  # random bytes in a text format are read as text (or named as binary): below
        (folder / f"random{extension}").write_bytes(bytes(noise.randrange(256) for _ in range(3000)))
        bad[f"random{extension}"] = ""
    (folder / "random-bytes.txt").write_bytes(bytes(noise.randrange(256) for _ in range(3000)))
    bad["random-bytes.txt"] = "binary"
    for extension, inner in ((".docx", "word/document.xml"), (".xlsx", "xl/workbook.xml"), (".epub", "content.opf"),
                             (".pptx", "ppt/presentation.xml"), (".odt", "content.xml")):  # fmt: skip
        zip_bomb(folder / f"bomb{extension}", inner)
        bad[f"bomb{extension}"] = "unpack"
    good_docx = io.BytesIO()
    import docx

    document = docx.Document()
    document.add_paragraph("A real document that was cut short.")
    document.save(good_docx)
    (folder / "truncated.docx").write_bytes(good_docx.getvalue()[: len(good_docx.getvalue()) // 2])
    bad["truncated.docx"] = ""
    (folder / "deep.html").write_text("<div>" * 10000 + "deep text" + "</div>" * 10000, encoding="utf-8")
    bad["deep.html"] = ""  # read or refused, never a crash
    return bad


def ingest(folder: Path, data: Path) -> Any:
    result = CliRunner().invoke(
        ingest_command, [str(folder), "--json", "--data-dir", str(data), "--embedding-model", BUNDLED_EMBEDDER]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_bad_files_cost_one_named_line_each_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    bad = write_torture_folder(folder)
    result = ingest(folder, tmp_path / "data")
    report = json.loads(result.stdout)
    failed = {Path(problem["path"]).name: problem["error"] for problem in report["files_failed"]}
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(failed)  # one line per bad file
    for name, reason in failed.items():
        assert name in bad, f"a good file failed: {name}: {reason}"
        assert reason.strip(), name
    for name, word in bad.items():
        if name == "deep.html" and name not in failed:
            continue  # a deep tree that parses is fine too
        assert name in failed, f"{name} was not refused"
        assert word.lower() in failed[name].lower(), (name, failed[name])
    assert report["files_added"] == len(GOOD) + (0 if "deep.html" in failed else 1)
    assert result.exit_code == 1  # some file failed: the status says so
    again = json.loads(ingest(folder, tmp_path / "data").stdout)
    assert (again["files_added"], again["files_updated"], again["chunks_added"], again["chunks_removed"]) == (
        0,
        0,
        0,
        0,
    )


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    import resource

    zip_bomb(tmp_path / "bomb.docx", "word/document.xml")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(LoadError, match="unpack"):
        load_document(tmp_path / "bomb.docx")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing was unpacked


def test_files_that_vanish_or_turn_unreadable_after_discovery(tmp_path: Path, embedder: Any) -> None:
    from ingest.pipeline import IngestPipeline
    from rag.retrieval.store import ChunkStore, connect_chroma

    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("stays.txt", "vanishes.txt", "locked.txt"):
        (folder / name).write_text(f"This is {name}.\n", encoding="utf-8")
    pipeline = IngestPipeline(ChunkStore(connect_chroma(path=tmp_path / "chroma"), "docs"), embedder)
    original = pipeline._check

    def meddle(file: Any, *, explicitly_named: bool) -> Any:  # between discovery and loading
        if file.absolute.endswith("vanishes.txt"):
            os.remove(file.path)
        if file.absolute.endswith("locked.txt"):
            os.chmod(file.path, 0)
        return original(file, explicitly_named=explicitly_named)

    pipeline._check = meddle  # type: ignore[method-assign]
    try:
        report = pipeline.run([folder])
    finally:
        os.chmod(folder / "locked.txt", 0o644)
    failed = {Path(problem.path).name: problem.error for problem in report.files_failed}
    assert report.files_added == (1 if os.geteuid() != 0 else 2)  # root reads a mode-0 file anyway
    assert failed.get("vanishes.txt")
    if os.geteuid() != 0:
        assert "permission" in failed["locked.txt"].lower() or "cannot be read" in failed["locked.txt"]


def test_a_store_failing_mid_write_loses_nothing_and_the_rerun_completes(tmp_path: Path, embedder: Any) -> None:
    from ingest.pipeline import IngestPipeline
    from rag.errors import StoreError
    from rag.retrieval.store import ChunkStore, connect_chroma
    from tests.test_ingest import _comparable, snapshot

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Version one: the depot opens at seven.\n", encoding="utf-8")
    (folder / "b.txt").write_text("The canteen serves noodles on Monday.\n", encoding="utf-8")

    def pipeline(data: Path) -> IngestPipeline:
        return IngestPipeline(ChunkStore(connect_chroma(path=data / "chroma"), "docs"), embedder)

    pipeline(tmp_path / "data").run([folder])
    (folder / "a.txt").write_text("Version two: the depot opens at nine.\n", encoding="utf-8")
    (folder / "c.txt").write_text("A new file about the bicycle shed.\n", encoding="utf-8")
    failing = pipeline(tmp_path / "data")
    real_delete = failing.store.delete

    def broken_delete(ids: Any) -> None:  # the new chunks are written, then the store fails
        raise RuntimeError("disk I/O error")

    failing.store.delete = broken_delete  # type: ignore[method-assign]
    with pytest.raises(StoreError, match=r"Nothing already stored is lost.*run the same ingest again"):
        failing.run([folder])
    failing.store.delete = real_delete  # type: ignore[method-assign]
    texts = [text for text, _ in snapshot(tmp_path / "data").values()]
    assert any("Version one" in text for text in texts)  # the previous version is still answerable
    pipeline(tmp_path / "data").run([folder])  # the rerun completes the store ...
    pipeline(tmp_path / "clean").run([folder])  # ... to what one clean run makes
    assert _comparable(snapshot(tmp_path / "data")) == _comparable(snapshot(tmp_path / "clean"))

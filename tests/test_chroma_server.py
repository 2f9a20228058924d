"""The same ingest against a real Chroma server (``chroma run``), as users who outgrow one machine run it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from rag.retrieval.store import connect_chroma
from tests.conftest import BUNDLED_EMBEDDER, free_port

REPO = Path(__file__).resolve().parents[1]


def _ingest(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", "ingest", *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_ingest_into_a_chroma_server(tmp_path: Path, chroma_server: str) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# 服务器\n\n向量库运行在独立的服务器进程中。\n", encoding="utf-8")
    (folder / "b.txt").write_text("Several processes can share one Chroma server.", encoding="utf-8")
    env = {"RAG_CHROMA_URL": chroma_server, "RAG_EMBEDDING_MODEL": BUNDLED_EMBEDDER, "RAG_DATA_DIR": str(tmp_path)}

    first = _ingest(str(folder), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["files_added"] == 2
    assert not (tmp_path / "chroma").exists()  # nothing went to an embedded store

    collection = connect_chroma(url=chroma_server).get_collection("docs")
    got = collection.get(include=["metadatas"])
    assert {m["file_name"] for m in got["metadatas"] or []} == {"a.md", "b.txt"}

    (folder / "b.txt").unlink()
    second = _ingest(str(folder), cwd=tmp_path, env=env)
    assert json.loads(second.stdout)["files_removed"] == 1
    assert collection.count() == 1


def test_server_down_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("内容。", encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    result = _ingest(str(folder), cwd=tmp_path, env={"RAG_CHROMA_URL": url})
    assert result.returncode == 1
    assert f"cannot reach the Chroma server at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the command shows files, chunks and time left."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"第{i}个文件。" * 50, encoding="utf-8")
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rag",
            "ingest",
            str(folder),
            "--data-dir",
            str(tmp_path / "data"),
            "--embedding-model",
            BUNDLED_EMBEDDER,
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "160"},
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        output += data
    process.wait(timeout=300)
    os.close(main)
    screen = output.decode("utf-8", "replace")
    assert process.returncode == 0, screen
    assert "3/3 files" in screen and "chunks" in screen and "left" in screen
    assert "3 files seen: 3 added" in screen

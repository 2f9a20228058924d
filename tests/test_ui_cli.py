"""``rag ui`` as a user starts it: a real subprocess, bound to 127.0.0.1, with a login when asked for one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def test_help_has_examples() -> None:
    from click.testing import CliRunner

    from rag.cli.main import cli

    result = CliRunner().invoke(cli, ["ui", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--auth" in result.output and "127.0.0.1" in result.output
    bad = CliRunner().invoke(cli, ["ui", "--auth", "no-colon"])
    assert bad.exit_code == 2 and "USER:PASSWORD" in bad.output


@pytest.mark.slow
def test_rag_ui_serves_on_localhost_with_a_login(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAG_UI_AUTH": "alice:s3cret:pw"}
    env.pop("GRADIO_TEMP_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-c", "from rag.cli.main import main; main()", "ui", "--no-llm", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                page = httpx.get(f"{base}/config", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "rag ui did not start within 120 s"
                time.sleep(0.5)
        assert page.status_code == 401  # nothing without the login
        with httpx.Client(base_url=base, timeout=10) as client:
            wrong = client.post("/login", data={"username": "alice", "password": "nope"})
            assert wrong.status_code == 400
            login = client.post("/login", data={"username": "alice", "password": "s3cret:pw"})
            assert login.status_code == 200, login.text
            assert client.get("/config").status_code == 200
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"rag ui: http://127.0.0.1:{port}" in output and "retrieval only" in output
    assert (tmp_path / "data" / "chroma").is_dir()

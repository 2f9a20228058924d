"""The MCP server as MCP hosts use it: the official SDK's own client, over stdio (a real `rag mcp` process) and
over streamable HTTP (a real `rag serve` at /mcp, its API key rule), on a real store of generated Chinese and
English documents (a two-page PDF among them), with the bundled SmolLM2 for `ask`. What the model writes is never
asserted (CPUs differ): answers on structure; retrieval, documents and errors (ours) on content."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from rag.app.root import Components
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.documents import write_pdf
from tests.test_serve import start_server

pytestmark = pytest.mark.slow

T = TypeVar("T")
KEY = "mcp-key-0123"
TOOLS = {"search", "ask", "list_collections", "list_documents", "read_document"}
DOCUMENTS = {
    "handbook.md": "# Handbook\n\n## Remote work\n\nEmployees may work remotely up to three days per week. "
    "Managers approve remote days in advance.\n\n## Leave\n\nEmployees get 25 days of paid leave per year.\n",
    "security.md": "# Security\n\nPasswords must be at least 14 characters long and rotate every 180 days.\n",
    "规章制度.md": "# 规章制度\n\n## 年假\n\n员工每年享有带薪年假十五天，请假须提前三天申请。\n",
}
PDF_PAGES = ["长江是中国第一长河，全长约六千三百公里。", "黄河是中国第二长河，被称为中华民族的母亲河。"]
#: Long enough for several chunks that share their overlaps: read back, each sentence comes once, in order.
LONG_TEXT = " ".join(f"Item {n} of the minutes records decision number {n} on the budget." for n in range(1, 121))
MODEL_FLAGS = ["--llm-n-ctx", "4096", "--max-tokens", "24"]


@pytest.fixture(scope="module")
def data_dir(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Collection 'docs' (English, Chinese, a two-page Chinese PDF) and collection 'work' (one file)."""
    root = tmp_path_factory.mktemp("mcp")
    docs, work = root / "docs", root / "work"
    docs.mkdir()
    work.mkdir()
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    write_pdf(docs / "rivers.pdf", PDF_PAGES)
    (work / "plan.txt").write_text("The launch is planned for the second week of March.\n", encoding="utf-8")
    (work / "minutes.txt").write_text(LONG_TEXT, encoding="utf-8")
    for collection, folder, count in (("docs", docs, 4), ("work", work, 2)):
        components = Components(
            Settings(data_dir=root / "data", embedding_model=BUNDLED_EMBEDDER, collection=collection)
        )
        components.share_embedder(embedder)
        report = components.ingest_pipeline().run([folder])
        assert report.files_added == count and not report.files_failed
    return root / "data"


class Session:
    """One SDK client, connected for the whole module on an event loop of its own thread; tests run coroutines
    on it (the SDK's streams belong to the task that opened them)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: Any = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._hold(connect),), daemon=True)
        self._thread.start()
        if not self._ready.wait(180) or self._error is not None:
            raise AssertionError(f"the MCP client did not connect: {self._error!r}")

    async def _hold(self, connect: Callable[[], Any]) -> None:
        self._stop = asyncio.Event()
        try:
            async with connect() as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # reported by the constructor
            self._error = error
            self._ready.set()

    def run(self, work: Callable[[Any], Awaitable[T]], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(work(self.client), self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, tool: str, arguments: dict[str, Any] | None = None, **options: Any) -> Any:
        return self.run(lambda client: client.call_tool(tool, arguments or {}, **options))

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def _stdio_params(data_dir: Path, smollm2_gguf: Path) -> Any:
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-c",
            "from rag.cli.main import main; main()",
            "mcp",
            "--data-dir",
            str(data_dir),
            "--llm-model",
            str(smollm2_gguf),
            *MODEL_FLAGS,
        ],
        env={**os.environ, "RAG_LLM_PROMPT_FORMAT": "native"},
    )


@pytest.fixture(scope="module")
def stdio(data_dir: Path, smollm2_gguf: Path) -> Iterator[Session]:
    """The SDK client talking to a `rag mcp` process it started (as Claude Desktop does)."""
    from mcp.client import Client

    session = Session(lambda: Client(_stdio_params(data_dir, smollm2_gguf)))
    yield session
    session.close()


@pytest.fixture(scope="module")
def server(data_dir: Path, smollm2_gguf: Path) -> Iterator[str]:
    """A real `rag serve` with an API key; MCP at /mcp."""
    process, base = start_server(data_dir, env={"RAG_API_KEY": KEY},
                                 model_args=["--llm-model", str(smollm2_gguf), *MODEL_FLAGS])  # fmt: skip
    yield base
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def _http_client(base: str, key: str | None = KEY, **options: Any) -> Any:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(300, read=300))
    return Client(streamable_http_client(f"{base}/mcp", http_client=http), **options)


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[Session]:
    """The SDK client over streamable HTTP (the 2026 protocol it negotiates: one self-contained POST a request)."""
    session = Session(lambda: _http_client(server))
    yield session
    session.close()


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


# -- stdio ----------------------------------------------------------------------------------------------------------
def test_tools_have_typed_input_and_output_schemas(stdio: Session) -> None:
    tools = {tool.name: tool for tool in stdio.run(lambda client: client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.output_schema and tool.output_schema["type"] == "object"
    search = tools["search"].input_schema
    assert search["required"] == ["query"] and search["properties"]["k"]["maximum"] == 50
    assert "passages" in tools["search"].output_schema["properties"]
    ask = tools["ask"]
    assert ask.input_schema["required"] == ["question"]
    assert ask.input_schema["$defs"]["Turn"]["properties"]["role"]["enum"] == ["user", "assistant"]
    assert {"answer", "sources", "cited", "figures"} <= set(ask.output_schema["properties"])
    assert tools["read_document"].input_schema["required"] == ["document_id"]
    assert tools["search"].annotations.read_only_hint is True
    for model in ("Passage", "Source"):  # the page view's link is part of the typed results
        link = tools["search" if model == "Passage" else "ask"].output_schema["$defs"][model]["properties"]
        assert {"type": "string"} in link["page_image_url"]["anyOf"]


def test_search_finds_english_and_chinese_passages(stdio: Session) -> None:
    found = _structured(stdio.call("search", {"query": "password length", "k": 2}))
    assert found["collection"] == "docs" and len(found["passages"]) == 2
    top = found["passages"][0]
    assert top["file_name"] == "security.md" and "14 characters" in top["text"]
    assert top["document_id"].startswith("doc-") and top["page"] is None and isinstance(top["score"], float)
    assert top["page_image_url"] is None  # stdio: no HTTP server to open a page view from
    chinese = _structured(stdio.call("search", {"query": "年假 天数", "k": 3}))
    assert chinese["passages"][0]["file_name"] == "规章制度.md" and "十五天" in chinese["passages"][0]["text"]
    only = _structured(stdio.call("search", {"query": "password length", "k": 3, "sources": ["handbook.md"]}))
    assert {passage["file_name"] for passage in only["passages"]} == {"handbook.md"}
    other = _structured(stdio.call("search", {"query": "launch date", "collection": "work"}))
    assert other["collection"] == "work" and other["passages"][0]["file_name"] == "plan.txt"


def test_collections_documents_and_reading_by_id(stdio: Session) -> None:
    collections = _structured(stdio.call("list_collections"))["collections"]
    assert [(c["name"], c["default"]) for c in collections] == [("docs", True), ("work", False)]
    assert all(c["chunks"] > 0 and c["embedding_model"] for c in collections)
    listed = _structured(stdio.call("list_documents"))
    assert listed["collection"] == "docs"
    documents = {document["file_name"]: document for document in listed["documents"]}
    assert set(documents) == {*DOCUMENTS, "rivers.pdf"}
    assert all(d["uri"] == f"rag://documents/{d['id']}" and d["complete"] for d in documents.values())
    handbook = _structured(stdio.call("read_document", {"document_id": documents["handbook.md"]["id"]}))
    assert "three days per week" in handbook["text"] and "25 days of paid leave" in handbook["text"]
    assert handbook["text"].count("three days per week") == 1 and not handbook["truncated"]  # overlaps kept once
    pdf = documents["rivers.pdf"]["id"]
    whole = _structured(stdio.call("read_document", {"document_id": pdf}))
    assert whole["pages"] == [1, 2] and "长江" in whole["text"] and "黄河" in whole["text"]
    second = _structured(stdio.call("read_document", {"document_id": pdf, "first_page": 2, "last_page": 2}))
    assert second["pages"] == [2] and "黄河" in second["text"] and "长江是" not in second["text"]
    cut = _structured(stdio.call("read_document", {"document_id": pdf, "max_chars": 5}))
    assert len(cut["text"]) == 5 and cut["truncated"] and cut["total_chars"] == len(whole["text"])
    work = {d["file_name"]: d for d in _structured(stdio.call("list_documents", {"collection": "work"}))["documents"]}
    assert set(work) == {"plan.txt", "minutes.txt"} and work["minutes.txt"]["chunks"] > 2
    minutes = _structured(stdio.call("read_document", {"document_id": work["minutes.txt"]["id"]}))["text"]
    assert minutes.split() == LONG_TEXT.split()  # the chunks joined, their overlaps once


def test_documents_are_resources(stdio: Session) -> None:
    resources = stdio.run(lambda client: client.list_resources()).resources
    by_name = {resource.name: resource for resource in resources}
    assert {*DOCUMENTS, "rivers.pdf", "plan.txt", "minutes.txt"} <= set(by_name)
    templates = stdio.run(lambda client: client.list_resource_templates()).resource_templates
    assert [template.uri_template for template in templates] == ["rag://documents/{document_id}"]
    uri = str(by_name["security.md"].uri)
    contents = stdio.run(lambda client: client.read_resource(uri)).contents
    assert "14 characters" in contents[0].text and contents[0].mime_type == "text/plain"


def test_bad_arguments_and_missing_documents_are_tool_errors(stdio: Session, data_dir: Path) -> None:
    from mcp.shared.exceptions import MCPError

    message = _error_text(stdio.call("search", {"query": "password", "k": 0}))
    assert "k" in message and "greater than or equal to 1" in message
    message = _error_text(stdio.call("search", {"query": "password", "collection": "nope"}))
    assert "collection 'nope' does not exist" in message and "docs, work" in message
    message = _error_text(stdio.call("read_document", {"document_id": "doc-000000000000000000000000"}))
    assert "no document 'doc-000000000000000000000000'" in message and "list the documents" in message
    for path in ("/etc/passwd", "../../etc/passwd", str(data_dir.parent / "docs" / "handbook.md")):
        assert "no document" in _error_text(stdio.call("read_document", {"document_id": path}))  # ids, never paths
    documents = _structured(stdio.call("list_documents"))["documents"]
    handbook = next(d["id"] for d in documents if d["file_name"] == "handbook.md")
    message = _error_text(stdio.call("read_document", {"document_id": handbook, "first_page": 2}))
    assert "handbook.md has no pages" in message
    pdf = next(d["id"] for d in documents if d["file_name"] == "rivers.pdf")
    assert "pages 1 to 2, not 5 to 9" in _error_text(
        stdio.call("read_document", {"document_id": pdf, "first_page": 5, "last_page": 9})
    )
    with pytest.raises(MCPError, match="no document 'doc-missing'"):
        stdio.run(lambda client: client.read_resource("rag://documents/doc-missing"))
    assert _structured(stdio.call("list_collections"))["collections"]  # still serving


def test_ask_streams_the_answer_as_progress(stdio: Session) -> None:
    updates: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, message))

    result = _structured(stdio.call("ask", {"question": "How many days per week may employees work remotely?"},
                                    progress_callback=on_progress))  # fmt: skip
    assert isinstance(result["answer"], str) and result["collection"] == "docs"
    assert result["sources"] and all(s["document_id"].startswith("doc-") and s["file_name"] for s in result["sources"])
    assert result["cited"] == [s["n"] for s in result["sources"] if s["cited"]]
    assert result["figures"]["prompt_tokens"] > 0 and result["figures"]["total_ms"] > 0
    assert [progress for progress, _ in updates] == list(range(1, len(updates) + 1))  # increasing, one a step
    assert updates and (updates[0][1] or "").startswith("found ")
    pieces = [message or "" for _, message in updates[1:] if not (message or "").startswith("reading the passages")]
    assert "".join(pieces) == result["answer"]  # the deltas, in order, are the answer
    follow_up = _structured(stdio.call("ask", {
        "question": "And how many days of paid leave?", "k": 2, "max_tokens": 8, "temperature": 0.0,
        "conversation": [{"role": "user", "content": "How many days per week may employees work remotely?"},
                         {"role": "assistant", "content": result["answer"] or "Three."}],
    }))  # fmt: skip
    assert isinstance(follow_up["answer"], str) and follow_up["sources"]


def _cancel_first_ask(session: Session, during: Callable[[], None] = lambda: None) -> bool:
    """Starts a long answer, cancels it at its first progress notification; True if it was cancelled."""

    async def work(client: Any) -> bool:
        started = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            started.set()

        call = asyncio.ensure_future(client.call_tool(
            "ask", {"question": "Describe every rule of the handbook in detail.", "max_tokens": 400},
            progress_callback=on_progress))  # fmt: skip
        await asyncio.wait_for(started.wait(), 120)
        await asyncio.to_thread(during)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            return True
        return False

    return session.run(work)


def test_a_cancelled_ask_stops_and_frees_its_slot(stdio: Session) -> None:
    assert _cancel_first_ask(stdio)
    # one slot (llama.cpp in process): a slot left taken would make this wait forever
    again = stdio.run(lambda client: asyncio.wait_for(client.call_tool("ask", {"question": "Password rules?"}), 120))
    assert not again.is_error and isinstance(again.structured_content["answer"], str)


def test_stdio_with_the_initialize_handshake_desktop_hosts_use(data_dir: Path, smollm2_gguf: Path) -> None:
    from mcp.client import Client

    session = Session(lambda: Client(_stdio_params(data_dir, smollm2_gguf), mode="legacy"))
    try:
        assert session.client.protocol_version == "2025-11-25"
        assert {tool.name for tool in session.run(lambda client: client.list_tools()).tools} == TOOLS
        found = _structured(session.call("search", {"query": "paid leave per year", "k": 1}))
        assert found["passages"][0]["file_name"] == "handbook.md"
        assert _cancel_first_ask(session)  # notifications/cancelled, on this protocol
        again = session.run(lambda client: asyncio.wait_for(client.call_tool("ask", {"question": "Leave?"}), 120))
        assert not again.is_error and again.structured_content["sources"]
    finally:
        session.close()


# -- streamable HTTP in `rag serve` -------------------------------------------------------------------------------
def test_http_refuses_a_missing_or_wrong_key(server: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for given in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{server}/mcp", json=body, headers={**headers, **given}, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key" and "www-authenticate" in response.headers
    for key in (None, "wrong"):  # the SDK's client gets no session (it reports the 401 as an error response)
        with pytest.raises(AssertionError, match="did not connect"):
            Session(lambda key=key: _http_client(server, key))  # type: ignore[misc]


def test_http_tools_resources_and_progress(http: Session, server: str) -> None:
    tools = {tool.name for tool in http.run(lambda client: client.list_tools()).tools}
    assert tools == TOOLS
    found = _structured(http.call("search", {"query": "长江 全长", "k": 2}))
    assert found["passages"][0]["file_name"] == "rivers.pdf" and found["passages"][0]["page"] == 1
    documents = _structured(http.call("list_documents"))["documents"]
    assert {d["file_name"] for d in documents} == {*DOCUMENTS, "rivers.pdf"}
    message = _error_text(http.call("read_document", {"document_id": "doc-nope"}))
    assert "no document 'doc-nope'" in message
    updates: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(message)

    answer = _structured(http.call("ask", {"question": "年假有几天？", "max_tokens": 8}, progress_callback=on_progress))
    assert isinstance(answer["answer"], str) and answer["sources"] and (updates[0] or "").startswith("found ")
    for source in answer["sources"]:
        assert source["page_image_url"].startswith(f"{server}/v1/documents/{source['document_id']}/")


def test_http_results_link_the_page_view_as_the_http_api_does(http: Session, server: str) -> None:
    """search's passages carry the page_image_url /v1/chunks gives for the same passage (absolute to this server,
    signed for the key); a browser opens it without the key: the PDF's page as a PNG."""
    from io import BytesIO

    from PIL import Image

    passage = _structured(http.call("search", {"query": "长江 全长", "k": 1}))["passages"][0]
    link = passage["page_image_url"]
    assert link.startswith(f"{server}/v1/documents/{passage['document_id']}/pages/1?highlight=") and "access=" in link
    chunks = httpx.post(f"{server}/v1/chunks", json={"model": "rag-docs", "query": "长江 全长", "k": 1},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()["data"]  # fmt: skip
    assert chunks[0]["page_image_url"].split("access=")[0] == link.split("access=")[0]  # the same page, passage
    page = httpx.get(link, timeout=60)  # no Authorization header: the signed link opens it
    assert page.status_code == 200 and page.headers["content-type"] == "image/png" and page.headers["x-pages"] == "2"
    assert Image.open(BytesIO(page.content)).size[0] > 0
    forged = httpx.get(link.split("access=")[0] + "access=api-key.9999999999.0000", timeout=60)
    assert forged.status_code == 401


def test_http_legacy_sessions_work_too(server: str) -> None:
    session = Session(lambda: _http_client(server, mode="legacy"))  # the initialize handshake, a session id
    try:
        assert session.client.protocol_version == "2025-11-25"
        collections = _structured(session.call("list_collections"))["collections"]
        assert [c["name"] for c in collections] == ["docs", "work"]
        assert _cancel_first_ask(session)
        _wait_idle(server)
    finally:
        session.close()


def _health(server: str) -> dict[str, Any]:
    return httpx.get(f"{server}/health", timeout=30).json()


def _wait_idle(server: str, within_s: float = 10) -> float:
    """Seconds until no answer runs (the slot was given back)."""
    started = time.monotonic()
    while _health(server)["running"]:
        assert time.monotonic() - started < within_s, "the cancelled answer still holds its slot"
        time.sleep(0.1)
    return time.monotonic() - started


def test_http_cancel_stops_generation_and_frees_the_shared_slot(http: Session, server: str) -> None:
    seen: dict[str, Any] = {}
    assert _cancel_first_ask(http, during=lambda: seen.update(_health(server)))
    assert seen["running"] == 1  # the MCP answer took the slot the OpenAI API also uses: one admission
    # 400 tokens at ~100 tokens/s would hold the slot for seconds more: it is free almost at once
    assert _wait_idle(server, within_s=3) < 3
    question = {"model": "rag-docs", "messages": [{"role": "user", "content": "Password rules?"}]}
    reply = httpx.post(f"{server}/v1/chat/completions", json=question, headers={"Authorization": f"Bearer {KEY}"},
                       timeout=120)  # fmt: skip
    assert reply.status_code == 200


def test_http_tools_see_only_the_collections_of_the_key(data_dir: Path, tmp_path: Path) -> None:
    """Scoped keys over MCP: each key's tools list, search and read only its collection; the other one does not
    exist for it (the same rule as /v1)."""
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[keys.docs-team]\nkey = "docs-key-0123"\ncollections = ["docs"]\n\n'
        '[keys.work-team]\nkey = "work-key-0123"\ncollections = ["work"]\n',
        encoding="utf-8",
    )
    process, base = start_server(data_dir, "--no-llm", "--api-keys-file", str(keys), model_args=[])
    try:
        documents: dict[str, set[str]] = {}
        for key, mine, other in (("docs-key-0123", "docs", "work"), ("work-key-0123", "work", "docs")):
            session = Session(lambda key=key: _http_client(base, key))  # type: ignore[misc]
            try:
                names = {c["name"] for c in _structured(session.call("list_collections"))["collections"]}
                assert names == {mine}
                listed = _structured(session.call("list_documents", {"collection": mine}))["documents"]
                documents[mine] = {d["id"] for d in listed}
                assert documents[mine]
                for tool, arguments in (
                    ("list_documents", {"collection": other}),
                    ("search", {"query": "budget", "collection": other}),
                ):
                    assert f"collection '{other}' does not exist" in _error_text(session.call(tool, arguments))
                mine_search: dict[str, Any] = {"query": "budget decision", "k": 3, "collection": mine}
                found = _structured(session.call("search", mine_search))["passages"]
                assert found and {p["collection"] for p in found} == {mine}
            finally:
                session.close()
        for key, other in (("docs-key-0123", "work"), ("work-key-0123", "docs")):
            session = Session(lambda key=key: _http_client(base, key))  # type: ignore[misc]
            try:
                for doc_id in documents[other]:  # another collection's document: as if it did not exist
                    refused = _error_text(session.call("read_document", {"document_id": doc_id}))
                    assert f"no document '{doc_id}'" in refused
            finally:
                session.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
